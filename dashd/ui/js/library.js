// The Firmware page (#/firmware): the account's firmware library (POST
// /firmware, GET /firmware, DELETE /firmware/images/ID): add an image once,
// then send it to devices with a firmware job (the Jobs page, with the
// image chosen) or from a device's page.

import {api, describe, encode, upload} from './api.js';
import {announce, field, h, messageArea, replace, showMessage} from './dom.js';
import {confirmDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {refusedPage} from './perms.js';

function size(bytes) {
  if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(1)} MB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${bytes} bytes`;
}

export function mount(main, ctx) {
  if (ctx.perms.restricted) {
    return refusedPage(main, ctx, 'Firmware', '/firmware', 'use the firmware library');
  }
  const admin = ctx.perms.admin;
  const message = messageArea();
  const tbody = h('tbody');
  const empty = h('p', {class: 'muted', hidden: true}, 'The library is empty.');
  const table = h('table', {class: 'library'},
    h('caption', {class: 'visually-hidden'}, 'Firmware images, newest first'),
    h('thead', {}, h('tr', {}, ['Name', 'Version', 'Kind', 'Size', 'SHA-256', 'Added']
      .map((t) => h('th', {scope: 'col'}, t)), h('th', {scope: 'col'}, h('span', {class: 'visually-hidden'}, 'Actions')))),
    tbody);

  const file = h('input', {type: 'file', accept: '.zip,.bin,application/zip,application/octet-stream'});
  const bar = h('progress', {max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress'});
  const add = h('button', {type: 'submit', class: 'primary'}, 'Add to the library');
  const formMessage = messageArea();
  const form = h('form', {novalidate: true, hidden: !admin},
    h('h2', {}, 'Add an image'),
    field('Firmware file', file, 'A Mongoose OS .zip (from mos build) or a .bin image; checked as a device upload is, then kept in the store.').field,
    h('div', {class: 'actions left'}, add), bar, formMessage);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!file.files.length) {
      showMessage(formMessage, 'Choose a firmware file first.', 'error');
      file.focus();
      return;
    }
    add.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      const image = await upload('/firmware', file.files[0], {onProgress: (sent, total) => { bar.value = Math.round(100 * sent / total); }});
      form.reset();
      showMessage(formMessage, `Added ${image.name} (${size(image.size)}).`, 'success');
      announce(`Firmware ${image.name} added`);
      await load();
    } catch (error) {
      showMessage(formMessage, `Not added. ${describe(error)}`, 'error');
    } finally {
      add.disabled = false;
      bar.hidden = true;
    }
  });

  async function remove(image) {
    const ok = await confirmDialog({
      title: `Delete ${image.name}?`,
      body: `Image ${image.id} will be deleted from the library. Updates under way keep their copy; a job that has not ended keeps the image from being deleted.`,
      confirmLabel: 'Delete image',
    });
    if (!ok) return;
    try {
      await api('DELETE', `/firmware/images/${encode(image.id)}`);
      showMessage(message, `Deleted ${image.name}.`, 'success');
      announce(`Firmware ${image.name} deleted`);
      await load();
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
  }

  function row(image) {
    const manifest = image.manifest || {};
    const actions = h('td', {class: 'row-actions'});
    if (admin) {
      actions.append(
        h('button', {type: 'button', class: 'secondary small', 'aria-label': `Start a rollout of ${image.name}`,
          onclick: () => ctx.navigate(`#/jobs?firmware=${encode(image.id)}`)}, 'Start a rollout'),
        h('button', {type: 'button', class: 'danger small', 'aria-label': `Delete ${image.name}`,
          onclick: () => remove(image)}, 'Delete'));
    }
    return h('tr', {},
      h('td', {'data-label': 'Name'}, h('strong', {}, image.name), h('div', {class: 'muted'}, image.id)),
      h('td', {'data-label': 'Version'}, manifest.version ? `${manifest.version}${manifest.build_id ? ` (build ${manifest.build_id})` : ''}` : '—'),
      h('td', {'data-label': 'Kind'}, image.kind === 'zip' ? 'Mongoose OS .zip' : '.bin image'),
      h('td', {'data-label': 'Size'}, size(image.size)),
      h('td', {'data-label': 'SHA-256'}, h('code', {title: image.sha256}, image.sha256.slice(0, 16) + '…')),
      h('td', {'data-label': 'Added'}, timeEl(image.created)),
      actions);
  }

  async function load() {
    try {
      const images = await api('GET', '/firmware');
      if (!ctx.alive) return;
      replace(tbody, images.map(row));
      empty.hidden = images.length > 0;
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
  }

  main.append(h('h1', {}, 'Firmware'),
    h('p', {class: 'hint'}, 'Images uploaded once and sent to many devices: start a rollout (a firmware job, in phases if you like) from an image.'),
    message, form, h('h2', {}, 'Library'), h('div', {class: 'table-wrap'}, table), empty);
  load();
  return 'Firmware';
}
