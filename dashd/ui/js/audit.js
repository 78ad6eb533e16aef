// The audit log of the signed-in account (admin keys): every change and
// every device call made through the REST API, who made it (the key),
// when, and how it ended. Newest first, a page at a time: "Load older" at
// the bottom (pager.js), "Load newer" at the top.

import {api, describe, encode} from './api.js';
import {announce, h, messageArea, replace, showMessage} from './dom.js';
import {MAX_LIMIT, pageBack} from './pager.js';
import {refusedPage} from './perms.js';
import {auditFilters, describeEntry} from './auditwords.js';

const PAGE = 50;

function when(seconds) {
  const d = new Date(seconds * 1000);
  return h('time', {datetime: d.toISOString()}, d.toLocaleString());
}

export function mount(main, ctx) {
  const me = ctx.me;
  if (!ctx.perms.canReadAudit) {
    return refusedPage(main, ctx, 'Audit log', '/audit?limit=1', 'read the audit log');
  }
  const message = messageArea();
  const note = h('p', {class: 'count'});
  const tbody = h('tbody');
  const table = h('table', {class: 'audit'},
    h('caption', {class: 'visually-hidden'}, 'Audit log of this account, newest first'),
    h('thead', {}, h('tr', {}, ['Time', 'Key', 'Request', 'Device', 'Outcome'].map((t) => h('th', {scope: 'col'}, t)))),
    tbody);
  const newer = h('button', {type: 'button', class: 'secondary'}, 'Load newer');
  const older = h('button', {type: 'button', class: 'secondary'}, 'Load older');
  older.hidden = true;

  const keyNames = new Map();
  const devices = new Map();
  const filters = auditFilters(tbody, keyNames, devices);
  // The oldest entry shown, how many are shown from it on, the offset to
  // ask for newer ones from.
  let boundary = null;
  let shown = 0;
  let following = null;

  function row(entry) {
    const td = (label, ...content) => h('td', {'data-label': label}, h('span', {class: 'cell'}, content));
    const keyName = keyNames.get(entry.key_id);
    const device = entry.device_id ? devices.get(entry.device_id) : null;
    const failed = entry.status >= 400;
    const what = describeEntry(entry, device ? device.name : null);
    return h('tr', {class: failed ? 'failed' : null,
      dataset: {offset: String(entry.offset), device: entry.device_id || '', key: entry.key_id, action: what.action}},
      td('Time', when(entry.timestamp)),
      td('Key', keyName ? `${keyName} ` : '', h('code', {}, entry.key_id),
        entry.key_id === me.id ? h('span', {class: 'badge this'}, 'this key') : null,
        entry.key_account && entry.key_account !== me.account_id
          ? h('span', {class: 'badge'}, `account ${entry.key_account}`) : null),
      td('Request', h('span', {class: 'audit-words'}, failed ? `tried: ${what.text}` : what.text), ' ',
        h('code', {class: 'audit-request'}, `${entry.method} ${entry.path}`)),
      td('Device', entry.device_id
        ? (device ? h('a', {href: `#/devices/${encode(entry.device_id)}`}, device.name || entry.device_id) : h('code', {}, entry.device_id))
        : h('span', {class: 'muted'}, '—')),
      td('Outcome', h('strong', {class: failed ? 'status-failed' : 'status-ok'}, String(entry.status)),
        entry.error ? `: ${entry.error}` : ''));
  }

  const audit = async (start, limit) => {
    const reply = await api('GET', `/audit?start=${start}&limit=${limit}`);
    return {items: reply.entries, next: reply.next};
  };

  function count() {
    note.textContent = shown
      ? `${shown} entr${shown === 1 ? 'y' : 'ies'} shown, newest first${older.hidden ? ': every stored entry' : ''}.`
      : 'No entries yet: changes and device calls made with this account’s keys are listed here.';
  }

  async function load() {
    try {
      const [keys, list, first] = await Promise.all([api('GET', '/keys'), api('GET', '/devices'), audit(-PAGE, PAGE)]);
      if (!ctx.alive) return;
      for (const k of keys) keyNames.set(k.id, k.name);
      for (const d of list) devices.set(d.id, d);
      replace(tbody, first.items.slice().reverse().map(row));
      filters.apply();
      boundary = first.items.length ? first.items[0].offset : null;
      shown = first.items.length;
      following = first.next;
      older.hidden = first.items.length < PAGE;
      count();
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
    }
  }

  older.addEventListener('click', async () => {
    older.disabled = true;
    try {
      const {items, all} = await pageBack(audit, boundary, shown, PAGE);
      if (!ctx.alive) return;
      tbody.append(...items.slice().reverse().map(row));
      filters.apply();
      if (items.length) boundary = items[0].offset;
      shown += items.length;
      older.hidden = all;
      count();
      announce(items.length ? `Loaded ${items.length} older entries` : 'No older entries are stored');
    } catch (error) {
      if (ctx.alive) showMessage(message, `Older entries could not be loaded: ${describe(error)}`, 'error');
    } finally {
      older.disabled = false;
      if (older.hidden) table.focus();
    }
  });

  newer.addEventListener('click', async () => {
    if (following === null) return load();
    newer.disabled = true;
    try {
      const {items, next} = await audit(following, MAX_LIMIT);
      if (!ctx.alive) return;
      tbody.prepend(...items.slice().reverse().map(row));
      filters.apply();
      if (boundary === null && items.length) boundary = items[0].offset;
      shown += items.length;
      following = next;
      count();
      announce(items.length ? `Loaded ${items.length} newer entries` : 'No newer entries');
    } catch (error) {
      if (ctx.alive) showMessage(message, `Newer entries could not be loaded: ${describe(error)}`, 'error');
    } finally {
      newer.disabled = false;
    }
  });

  table.setAttribute('tabindex', '-1');
  main.append(
    h('h1', {}, 'Audit log'),
    h('p', {}, 'Every change and every device call made with the keys of account ', h('code', {}, me.account_id),
      ' through the REST API (and so this dashboard), and those the accounts its devices are shared with made on them: which key, when, and how it ended. Reads are not listed.'),
    message,
    h('section', {class: 'card', 'aria-labelledby': 'audit-entries'}, h('h2', {id: 'audit-entries'}, 'Entries'),
      filters.element,
      h('div', {class: 'actions left'}, newer),
      note,
      h('div', {class: 'table-wrap'}, table),
      h('div', {class: 'actions left'}, older)),
  );
  load();
  return 'Audit log';
}
