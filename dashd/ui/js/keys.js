// API keys of the signed-in account: create (the secret is shown once),
// list, revoke. Admin keys only; others never see this page's link.

import {api, describe, encode} from './api.js';
import {announce, field, h, messageArea, replace, showMessage, uid} from './dom.js';
import {confirmDialog, secretDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {refusedPage} from './perms.js';

const KINDS = [
  ['admin', 'Admin', 'everything in this account: devices, keys, sharing'],
  ['read-only', 'Read-only', 'sees every device of the account, changes nothing'],
  ['restricted', 'Restricted', "a customer's key: only the devices, shadow keys and methods listed below"],
];

function list(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function scopeSummary(scope, names) {
  if (!scope || !scope.devices) return h('span', {class: 'muted'}, '—');
  return h('ul', {class: 'plain'}, Object.entries(scope.devices).map(([id, acl]) => h('li', {},
    h('strong', {}, names.get(id) || id), ': ',
    `read ${(acl.read || []).join(', ') || 'nothing'}; write ${(acl.write || []).join(', ') || 'nothing'}; rpc ${(acl.rpc || []).join(', ') || 'none'}`)));
}

export function mount(main, ctx) {
  const me = ctx.me;
  const message = messageArea();
  if (!ctx.perms.canManageKeys) {
    return refusedPage(main, ctx, 'API keys', '/keys', 'manage keys');
  }
  const deviceNames = new Map();
  let deviceList = [];
  const tbody = h('tbody');
  const table = h('table', {class: 'keys'},
    h('caption', {class: 'visually-hidden'}, 'API keys of this account'),
    h('thead', {}, h('tr', {}, ['Name', 'ID', 'Kind', 'Created', 'Expires', 'Scope']
      .map((t) => h('th', {scope: 'col'}, t)), h('th', {scope: 'col'}, h('span', {class: 'visually-hidden'}, 'Actions')))),
    tbody);

  // The create form

  const name = h('input', {type: 'text', maxlength: 128, autocomplete: 'off'});
  const kindName = uid('kind');
  const kindInputs = KINDS.map(([value, label, what], i) => {
    const input = h('input', {type: 'radio', name: kindName, value, checked: i === 0, id: uid('kind')});
    return {input, element: h('div', {class: 'radio'}, input, h('label', {for: input.id}, h('strong', {}, label), ` — ${what}`))};
  });
  const expires = h('input', {type: 'datetime-local'});
  const scopeRows = h('div', {class: 'scope-rows'});
  const addScope = h('button', {type: 'button', class: 'secondary small'}, 'Add another device');
  const scopeBox = h('fieldset', {class: 'scope', hidden: true},
    h('legend', {}, 'What the restricted key may use'),
    h('p', {class: 'hint'}, 'Shadow keys as dotted paths (led covers led.on), comma-separated; in methods, * matches any run of characters (Sys.*).'),
    scopeRows, addScope);
  const formMessage = messageArea();
  const create = h('button', {type: 'submit', class: 'primary'}, 'Create key');
  const form = h('form', {novalidate: true},
    field('Name (optional)', name).field,
    h('fieldset', {class: 'kinds'}, h('legend', {}, 'Kind'), kindInputs.map((k) => k.element)),
    field('Expires (optional)', expires, 'Leave empty for a key that does not expire.').field,
    scopeBox,
    h('div', {class: 'actions left'}, create),
    formMessage);

  function kind() {
    return kindInputs.find((k) => k.input.checked).input.value;
  }

  function scopeRow() {
    // No device chosen until the user chooses one: a key for the first
    // device in the list, with no rights on it, is never what was meant.
    const device = h('select', {required: true}, h('option', {value: ''}, 'Choose a device'),
      deviceList.map((d) => h('option', {value: d.id}, `${d.name || d.id} (${d.id})`)));
    const read = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
    const write = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
    const rpc = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
    const row = h('div', {class: 'scope-row'},
      field('Device', device).field,
      field('Shadow keys it may read', read).field,
      field('Desired keys it may change', write).field,
      field('Methods it may call', rpc).field);
    const removeButton = h('button', {type: 'button', class: 'secondary small', onclick: () => {
      row.remove();
      addScope.focus();
    }}, 'Remove this device');
    row.append(removeButton);
    row.read = () => ({id: device.value, acl: {read: list(read.value), write: list(write.value), rpc: list(rpc.value)}});
    row.device = device;
    row.readInput = read;
    return row;
  }
  addScope.addEventListener('click', () => {
    const row = scopeRow();
    scopeRows.append(row);
    row.querySelector('select').focus();
  });
  for (const k of kindInputs) {
    k.input.addEventListener('change', () => {
      scopeBox.hidden = kind() !== 'restricted';
      if (!scopeBox.hidden && !scopeRows.children.length) scopeRows.append(scopeRow());
    });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {kind: kind()};
    if (name.value.trim()) body.name = name.value.trim();
    if (expires.value) {
      const when = new Date(expires.value).getTime() / 1000;
      if (!Number.isFinite(when)) {
        showMessage(formMessage, 'The expiry is not a valid date and time.', 'error');
        expires.focus();
        return;
      }
      body.expires = when;
    }
    if (body.kind === 'restricted') {
      const devices = {};
      for (const row of scopeRows.children) {
        const {id, acl} = row.read();
        if (!id) {
          showMessage(formMessage, 'Choose the device for each row of the restricted key, or remove the row.', 'error');
          row.device.focus();
          return;
        }
        if (!acl.read.length && !acl.write.length && !acl.rpc.length) {
          const chosen = row.device.selectedOptions[0].textContent;
          showMessage(formMessage, `The key may do nothing with ${chosen}: list shadow keys it may read, desired keys it may change or methods it may call.`, 'error');
          row.readInput.focus();
          return;
        }
        devices[id] = acl;
      }
      if (!Object.keys(devices).length) {
        showMessage(formMessage, 'A restricted key needs at least one device: add one.', 'error');
        addScope.focus();
        return;
      }
      body.scope = {devices};
    }
    create.disabled = true;
    try {
      const reply = await api('POST', '/keys', body);
      form.reset();
      scopeRows.replaceChildren();
      scopeBox.hidden = true;
      showMessage(formMessage, `Created key ${reply.name || reply.id}.`, 'success');
      await secretDialog({
        title: 'API key created',
        intro: `Key ${reply.name ? `“${reply.name}” ` : ''}(${reply.kind}, ID ${reply.id}):`,
        fields: [{label: 'API key', value: reply.key}],
      });
      await load();
      announce(`Key ${reply.name || reply.id} created`);
    } catch (error) {
      showMessage(formMessage, `Not created. ${describe(error)}`, 'error');
    } finally {
      create.disabled = false;
    }
  });

  // The list

  async function revoke(key) {
    const own = key.id === me.id;
    const ok = await confirmDialog({
      title: `Revoke ${key.name || key.id}?`,
      body: `${own ? 'You are signed in with this key: you will be signed out. ' : ''}The key stops working at once, and notification streams opened with it are closed.`,
      confirmLabel: 'Revoke key',
    });
    if (!ok) return;
    try {
      await api('DELETE', `/keys/${encode(key.id)}`);
    } catch (error) {
      showMessage(message, `Not revoked. ${describe(error)}`, 'error');
      return;
    }
    if (own) {
      ctx.signOut('You revoked the key you were signed in with.');
      return;
    }
    showMessage(message, `Key ${key.name || key.id} revoked.`, 'success');
    await load();
  }

  async function load() {
    let keys;
    try {
      [keys, deviceList] = await Promise.all([api('GET', '/keys'), api('GET', '/devices')]);
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
      return;
    }
    if (!ctx.alive) return;
    deviceNames.clear();
    for (const d of deviceList) deviceNames.set(d.id, d.name || d.id);
    // Rows added before the list came: offer its devices (keeping a choice).
    for (const row of scopeRows.children) {
      const chosen = row.device.value;
      replace(row.device, h('option', {value: ''}, 'Choose a device'),
        deviceList.map((d) => h('option', {value: d.id}, `${d.name || d.id} (${d.id})`)));
      row.device.value = deviceList.some((d) => d.id === chosen) ? chosen : '';
    }
    // One wrapper a cell, so the phone layout (label | value) stays two columns.
    const td = (label, ...content) => h('td', {'data-label': label}, h('span', {class: 'cell'}, content));
    replace(tbody, keys.map((k) => h('tr', {dataset: {keyId: k.id}},
      td('Name', k.name || h('span', {class: 'muted'}, '(no name)'),
        k.id === me.id ? h('span', {class: 'badge this'}, 'this key') : null),
      td('ID', h('code', {}, k.id)),
      td('Kind', k.kind),
      td('Created', timeEl(k.created)),
      td('Expires', timeEl(k.expires, 'never')),
      td('Scope', scopeSummary(k.scope, deviceNames)),
      h('td', {class: 'row-actions'}, h('button', {type: 'button', class: 'danger small',
        'aria-label': `Revoke ${k.name || k.id}`, onclick: () => revoke(k)}, 'Revoke')))));
  }

  main.append(
    h('h1', {}, 'API keys'),
    h('p', {}, 'Signed in with key ', h('code', {}, me.id), me.name ? ` (${me.name})` : '',
      ` of account `, h('code', {}, me.account_id), '. Give the account ID to an account that shares a device with you.'),
    message,
    h('section', {class: 'card', 'aria-labelledby': 'keys-list'}, h('h2', {id: 'keys-list'}, 'Keys of this account'),
      h('div', {class: 'table-wrap'}, table)),
    h('section', {class: 'card', 'aria-labelledby': 'keys-create'}, h('h2', {id: 'keys-create'}, 'Create a key'), form),
  );
  load();
  return 'API keys';
}
