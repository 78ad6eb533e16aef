// Modal dialogs on the native <dialog> element (focus stays inside, Escape
// closes it), and the one place where secrets are shown: once, with a copy
// button, and removed from the page when the dialog closes.

import {h, uid, announce} from './dom.js';

// Open a modal dialog. build(close) returns its body; resolves with the
// value close() was given (undefined on Escape).
export function openDialog({title, build, className = ''}) {
  const opener = document.activeElement;
  const titleId = uid('dialog-title');
  const dialog = h('dialog', {class: `dialog ${className}`, 'aria-labelledby': titleId});
  let result;
  const close = (value) => {
    result = value;
    dialog.close();
  };
  const done = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(result);
    });
  });
  dialog.append(h('h2', {id: titleId, tabindex: '-1'}, title), build(close, dialog));
  document.body.append(dialog);
  dialog.showModal();
  const first = dialog.querySelector('[autofocus]');
  if (first) first.focus();
  return {dialog, close, done};
}

// Resolves true when the user confirms.
export async function confirmDialog({title, body, confirmLabel, danger = true}) {
  const {done} = openDialog({
    title,
    className: 'confirm',
    build: (close) => h('div', {},
      h('p', {}, body),
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'secondary', autofocus: true, onclick: () => close(false)}, 'Cancel'),
        h('button', {type: 'button', class: danger ? 'danger' : 'primary', onclick: () => close(true)}, confirmLabel))),
  });
  return (await done) === true;
}

async function copy(text, input) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      // Fall through to the selection (permission refused).
    }
  }
  input.focus();
  input.select();
  try {
    return document.execCommand('copy');
  } catch (e) {
    return false;
  }
}

// A read-only value with a Copy button next to it.
export function copyField(label, value, {multiline = false} = {}) {
  const id = uid('copy');
  const input = multiline
    ? h('textarea', {id, class: 'code fit', readOnly: true, rows: 3, spellcheck: 'false'})
    : h('input', {id, class: 'code', type: 'text', readOnly: true, spellcheck: 'false', autocomplete: 'off'});
  input.value = value;
  const status = h('span', {class: 'copy-status', role: 'status'});
  const button = h('button', {type: 'button', class: 'secondary', 'aria-label': `Copy ${label}`}, 'Copy');
  button.addEventListener('click', async () => {
    const ok = await copy(value, input);
    status.textContent = ok ? 'Copied.' : 'Select the text and copy it yourself.';
    if (ok) announce(`${label} copied`);
  });
  return h('div', {class: 'field copy-field'},
    h('label', {for: id}, label),
    h('div', {class: 'copy-row'}, input, button),
    status);
}

// Show secrets once. fields: [{label, value, multiline}].
export function secretDialog({title, intro, fields, note}) {
  return openDialog({
    title,
    className: 'secret',
    build: (close) => h('div', {},
      intro ? h('p', {}, intro) : null,
      fields.map((f) => copyField(f.label, f.value, f)),
      h('p', {class: 'warning'}, note || 'This is shown only once: dashd keeps only a hash of it. Copy it now.'),
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'primary', autofocus: true, onclick: () => close(true)}, 'Done'))),
  }).done;
}

// What a Mongoose OS device needs to connect here.
export function deviceServerUrl() {
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${window.location.host}/api/v2/rpc`;
}

export function mosCommand(token) {
  return `mos config-set dash.enable=true dash.server=${deviceServerUrl()} dash.token=${token}`;
}

// What an mDash-library device (Arduino, ESP-IDF) needs: the token is its
// password, and the URL points it here instead of mdash.net.
export function mdashCode(token) {
  return `mDashBegin("${token}");\nmDashSetURL("${deviceServerUrl()}");`;
}

export function tokenDialog({title, device, token}) {
  return secretDialog({
    title,
    intro: `Device ${device.name ? `“${device.name}” ` : ''}(ID ${device.id}). A Mongoose OS device: run the provisioning command. A device with the mDash library (Arduino, ESP-IDF): the token is its device password, and mDashSetURL points it at this dashd instead of mdash.net.`,
    fields: [
      {label: 'Device token', value: token},
      {label: 'Provisioning command', value: mosCommand(token), multiline: true},
      {label: 'mDash library (Arduino, ESP-IDF) sketch lines', value: mdashCode(token), multiline: true},
    ],
    note: 'The token is shown only this once: dashd keeps only a hash of it. If it is lost, give the device a new token from its page.',
  });
}
