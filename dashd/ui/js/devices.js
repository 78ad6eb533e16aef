// The device list: every device the key may see, or those a device query
// selects (GET /devices?where=, run in the store; a query that cannot be
// read is explained with where it went wrong), its online state kept live
// from the notification stream, searchable and filterable; register (token
// shown once) and delete.

import {api, describe, encode} from './api.js';
import {announce, clearMessage, field, h, messageArea, replace, showMessage} from './dom.js';
import {confirmDialog, openDialog, tokenDialog} from './dialogs.js';
import {timeEl} from './format.js';

export function statusBadge(online) {
  return h('span', {class: `badge ${online ? 'online' : 'offline'}`}, online ? 'Online' : 'Offline');
}

export function displayName(device) {
  return device.name || device.id;
}

// Ask, delete, and say what happened. Resolves true once deleted.
export async function deleteDevice(device, message) {
  const ok = await confirmDialog({
    title: `Delete ${displayName(device)}?`,
    body: `Device ${device.id} will be deleted with its shadow. If it is connected it is disconnected, and its token stops working. This cannot be undone.`,
    confirmLabel: 'Delete device',
  });
  if (!ok) return false;
  // Its going offline now is no news (see the event handlers).
  device.deleting = true;
  try {
    await api('DELETE', `/devices/${encode(device.id)}`);
  } catch (error) {
    device.deleting = false;
    showMessage(message, describe(error), 'error');
    return false;
  }
  announce(`Device ${displayName(device)} deleted`);
  return true;
}

export function mount(main, ctx) {
  const perms = ctx.perms;
  const devices = new Map();
  const rows = new Map();
  const message = messageArea();

  const search = h('input', {type: 'search', autocomplete: 'off', spellcheck: 'false'});
  const queryInput = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false', maxlength: 1024,
    placeholder: 'shadow.tags.site = "berlin" and not online'});
  const queryMessage = messageArea();
  const clearQuery = h('button', {type: 'button', class: 'secondary', hidden: true}, 'Clear query');
  const queryForm = h('form', {class: 'query', novalidate: true},
    field('Device query', queryInput,
      'Fields: id, name, online, last_seen, info.KEY, shadow.reported.KEY, shadow.desired.KEY, shadow.tags.KEY. ' +
      'Compare with = != < <= > >=, in [...], exists, matches "glob*"; combine with and, or, not.').field,
    h('div', {class: 'actions'}, clearQuery, h('button', {type: 'submit', class: 'secondary'}, 'Apply query')),
    queryMessage);
  // The query the list shows (null: every device).
  let where = null;
  const status = h('select', {},
    h('option', {value: 'all'}, 'All'),
    h('option', {value: 'online'}, 'Online'),
    h('option', {value: 'offline'}, 'Offline'));
  const addButton = perms.canRegister
    ? h('button', {type: 'button', class: 'primary', onclick: () => addDevice()}, 'Add device')
    : null;
  const count = h('p', {class: 'count'});
  const tbody = h('tbody');
  const empty = h('p', {class: 'empty', hidden: true});
  const table = h('table', {class: 'devices'},
    h('caption', {class: 'visually-hidden'}, 'Devices'),
    h('thead', {}, h('tr', {},
      ['Name', 'ID', 'Status', 'Firmware', 'Architecture', 'Last seen']
        .map((t) => h('th', {scope: 'col'}, t)),
      perms.canRegister ? h('th', {scope: 'col'}, h('span', {class: 'visually-hidden'}, 'Actions')) : null)),
    tbody);

  main.append(
    h('div', {class: 'page-head'}, h('h1', {}, 'Devices'), addButton),
    h('div', {class: 'toolbar', role: 'search'},
      field('Search', search, 'Name, ID, firmware or architecture').field,
      field('Status', status).field),
    queryForm,
    message,
    count,
    h('div', {class: 'table-wrap'}, table),
    empty,
  );

  function matches(device) {
    const want = status.value;
    if (want === 'online' && !device.online) return false;
    if (want === 'offline' && device.online) return false;
    const q = search.value.trim().toLowerCase();
    if (!q) return true;
    const info = device.info || {};
    return [device.name, device.id, info.fw_version, info.fw_id, info.app, info.arch]
      .some((v) => typeof v === 'string' && v.toLowerCase().includes(q));
  }

  function applyFilter() {
    for (const [id, row] of rows) row.tr.hidden = !matches(devices.get(id));
    showCount();
  }

  // The counts, without touching rows other than the one that changed
  // (a live event must not cost a pass over a large fleet's DOM).
  function showCount() {
    let shown = 0;
    for (const row of rows.values()) if (!row.tr.hidden) shown += 1;
    const total = devices.size;
    const online = [...devices.values()].filter((d) => d.online).length;
    const matched = where === null ? '' : ' matching the query';
    count.textContent = shown === total
      ? `${total} device${total === 1 ? '' : 's'}${matched}, ${online} online`
      : `Showing ${shown} of ${total} devices${matched}`;
    empty.hidden = shown > 0;
    table.hidden = shown === 0;
    empty.textContent = total === 0
      ? (where !== null ? 'No device matches the query.'
        : perms.canRegister ? 'No devices yet. Add one to get its token.' : 'No devices are visible to this key.')
      : 'No device matches the search and filter.';
  }

  function makeRow(device) {
    const cells = {
      name: h('td', {'data-label': 'Name'}),
      id: h('td', {'data-label': 'ID'}),
      status: h('td', {'data-label': 'Status'}),
      firmware: h('td', {'data-label': 'Firmware'}),
      arch: h('td', {'data-label': 'Architecture'}),
      seen: h('td', {'data-label': 'Last seen'}),
    };
    const tr = h('tr', {dataset: {deviceId: device.id}}, Object.values(cells));
    if (perms.canRegister) {
      tr.append(h('td', {class: 'row-actions'}, perms.owns(device)
        ? h('button', {type: 'button', class: 'danger small', 'aria-label': `Delete ${displayName(device)}`,
          onclick: async () => {
            if (await deleteDevice(devices.get(device.id), message)) remove(device.id);
          }}, 'Delete')
        : h('span', {class: 'muted'}, 'shared')));
    }
    // One wrapper a cell, so the phone layout (label | value) stays two columns.
    const set = (td, ...content) => replace(td, h('span', {class: 'cell'}, content));
    const update = (d) => {
      set(cells.name, h('a', {href: `#/devices/${encode(d.id)}`}, displayName(d)));
      set(cells.id, h('code', {}, d.id));
      set(cells.status, statusBadge(d.online));
      const info = d.info || {};
      // fw_id too: a .bin update changes it, not always the version.
      set(cells.firmware, info.fw_version
        ? [info.fw_version, [info.app, info.fw_id].some(Boolean)
          ? h('span', {class: 'muted'}, ` (${[info.app, info.fw_id].filter(Boolean).join(', ')})`) : null]
        : h('span', {class: 'muted'}, '—'));
      set(cells.arch, info.arch || h('span', {class: 'muted'}, '—'));
      set(cells.seen, d.online ? 'now (connected)' : timeEl(d.last_seen));
    };
    update(device);
    return {tr, update};
  }

  function render() {
    rows.clear();
    const sorted = [...devices.values()].sort((a, b) =>
      displayName(a).localeCompare(displayName(b)) || a.id.localeCompare(b.id));
    tbody.replaceChildren();
    for (const device of sorted) {
      const row = makeRow(device);
      rows.set(device.id, row);
      tbody.append(row.tr);
    }
    applyFilter();
  }

  function remove(id) {
    devices.delete(id);
    const row = rows.get(id);
    if (row) row.tr.remove();
    rows.delete(id);
    applyFilter();
    search.focus();
  }

  async function load() {
    const asked = where;
    try {
      const list = await api('GET', asked === null ? '/devices' : `/devices?where=${encode(asked)}`);
      if (!ctx.alive || asked !== where) return;
      devices.clear();
      for (const d of list) devices.set(d.id, d);
      clearMessage(message);
      render();
      return true;
    } catch (error) {
      if (!ctx.alive) return false;
      if (asked !== null && error.status === 400) {
        showMessage(queryMessage, `The query was not applied. ${describe(error)}`, 'error');
        queryInput.setAttribute('aria-invalid', 'true');
        queryInput.focus();
      } else {
        showMessage(message, describe(error), 'error');
      }
      return false;
    }
  }

  queryForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = queryInput.value.trim();
    const before = where;
    where = text || null;
    clearMessage(queryMessage);
    queryInput.setAttribute('aria-invalid', 'false');
    if (await load()) {
      clearQuery.hidden = where === null;
      announce(count.textContent);
    } else {
      where = before;
    }
  });
  clearQuery.addEventListener('click', async () => {
    queryInput.value = '';
    where = null;
    clearMessage(queryMessage);
    queryInput.setAttribute('aria-invalid', 'false');
    clearQuery.hidden = true;
    await load();
    announce(count.textContent);
    queryInput.focus();
  });

  // Screen readers hear state changes, a few at a time.
  let pending = [];
  let flush = null;
  function tell(text) {
    pending.push(text);
    if (flush) return;
    flush = window.setTimeout(() => {
      announce(pending.length <= 3 ? pending.join('. ') : `${pending.length} devices changed state`);
      pending = [];
      flush = null;
    }, 700);
  }

  let reload = null;
  function reloadSoon() {
    if (reload) return;
    reload = window.setTimeout(() => { reload = null; if (ctx.alive) load(); }, 500);
  }

  ctx.listen((event) => {
    if (event.name === 'stream.reconnected') { reloadSoon(); return; }
    const device = devices.get(event.id);
    if (device && device.deleting) return;
    if (!device) {
      // A device registered elsewhere, shared with this account, or one
      // that has just come online.
      // (Under a query, one that may match it now.)
      if (['online', 'device.created', 'device.updated'].includes(event.name)
          || (where !== null && (event.name === 'offline' || event.name === 'shadow.update'))) {
        reloadSoon();
      }
      return;
    }
    if (event.name === 'device.deleted') {
      devices.delete(device.id);
      const row = rows.get(device.id);
      if (row) row.tr.remove();
      rows.delete(device.id);
      showCount();
      tell(`${displayName(device)} was deleted`);
      return;
    }
    if (event.name === 'device.updated') {
      // Renamed, or its sharing changed (it may be gone from this list).
      reloadSoon();
      return;
    }
    if (where !== null && (event.name === 'online' || event.name === 'offline' || event.name === 'shadow.update')) {
      // What the query selects may have changed with it.
      reloadSoon();
    }
    if (event.name === 'online' || event.name === 'offline') {
      device.online = event.name === 'online';
      device.last_seen = Date.now() / 1000;
      tell(`${displayName(device)} is now ${event.name}`);
    } else if (event.name === 'rpc.out.Heartbeat' && event.data && typeof event.data === 'object') {
      device.info = {...(device.info || {}), ...event.data};
    } else {
      return;
    }
    const row = rows.get(device.id);
    if (row) {
      row.update(device);
      row.tr.hidden = !matches(device);
    }
    showCount();
  });

  // What a search or filter leaves is said once typing pauses (live state
  // changes are announced on their own, see tell()).
  let said = null;
  function filterChanged() {
    applyFilter();
    window.clearTimeout(said);
    said = window.setTimeout(() => announce(count.textContent), 600);
  }
  search.addEventListener('input', filterChanged);
  status.addEventListener('change', filterChanged);

  function addDevice() {
    openDialog({
      title: 'Add a device',
      build: (close) => {
        const name = h('input', {type: 'text', maxlength: 128, autocomplete: 'off', autofocus: true});
        const shared = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
        const dialogMessage = messageArea();
        const submit = h('button', {type: 'submit', class: 'primary'}, 'Register');
        const form = h('form', {novalidate: true},
          field('Name (optional)', name).field,
          field('Share with (optional)', shared, 'Account IDs, comma-separated, that may also see and use it.').field,
          dialogMessage,
          h('div', {class: 'actions'},
            h('button', {type: 'button', class: 'secondary', onclick: () => close()}, 'Cancel'),
            submit));
        form.addEventListener('submit', async (e) => {
          e.preventDefault();
          const body = {};
          if (name.value.trim()) body.name = name.value.trim();
          if (shared.value.trim()) body.shared_with = shared.value.trim();
          submit.disabled = true;
          try {
            const reply = await api('POST', '/devices', body);
            close(reply);
          } catch (error) {
            submit.disabled = false;
            showMessage(dialogMessage, describe(error), 'error');
            name.focus();
          }
        });
        return form;
      },
    }).done.then(async (reply) => {
      if (!reply) return;
      const {token, ...device} = reply;
      if (ctx.alive) {
        devices.set(device.id, device);
        render();
      }
      await tokenDialog({title: 'Device registered', device, token});
      announce(`Device ${displayName(device)} registered`);
    });
  }

  load();
  return 'Devices';
}
