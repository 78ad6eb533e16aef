// The audit log in words: what an entry did ("renamed boiler to boiler 2",
// "changed desired.led", "called Sys.Reboot"), from its method, path and
// detail (dashd.api.auditdetail), and the filters of the audit page (by
// device, key and action) over the entries loaded.

import {field, h, replace} from './dom.js';

export const ACTIONS = [
  ['register', 'Registered devices'],
  ['rename', 'Renamed devices'],
  ['shadow', 'Changed shadows'],
  ['sharing', 'Changed sharing'],
  ['delete', 'Deleted devices'],
  ['token', 'New device tokens'],
  ['call', 'Device calls'],
  ['firmware', 'Firmware updates'],
  ['keys', 'API keys'],
  ['accounts', 'Accounts'],
  ['session', 'Dashboard sign-ins'],
  ['other', 'Other'],
];

function list(paths) {
  return paths.length > 4 ? `${paths.slice(0, 4).join(', ')} and ${paths.length - 4} more` : paths.join(', ');
}

// {action, text}: what the entry did, in a sentence without its subject.
export function describeEntry(entry, deviceName) {
  const {method, path} = entry;
  const detail = entry.detail || {};
  const name = deviceName || entry.device_id;
  const sub = entry.device_id ? path.replace(/^\/api\/v2\/devices\/[^/]+/, '') : null;
  if (path === '/api/v2/devices' && method === 'POST') {
    return {action: 'register', text: detail.name && detail.name[1] ? `registered ${detail.name[1]}` : 'registered a device'};
  }
  if (sub === '' && method === 'POST') {
    const parts = [];
    let action = 'other';
    if (detail.name) {
      parts.push(`renamed ${detail.name[0] || name} to ${detail.name[1]}`);
      action = 'rename';
    }
    if (detail.changed && detail.changed.length) {
      parts.push(`changed ${list(detail.changed)}${detail.name ? '' : ` of ${name}`}`);
      if (action === 'other') action = 'shadow';
    }
    if (detail.sharing) {
      parts.push(`changed who ${name} is shared with`);
      if (action === 'other') action = 'sharing';
    }
    return {action, text: parts.length ? parts.join('; ') : `changed ${name}`};
  }
  if (sub === '' && method === 'DELETE') return {action: 'delete', text: `deleted ${name}`};
  if (sub === '/token') return {action: 'token', text: `gave ${name} a new token`};
  let m;
  if ((m = /^\/rpc\/(.+)$/.exec(sub || ''))) return {action: 'call', text: `called ${decodeURIComponent(m[1])} on ${name}`};
  if (sub === '/calls' && method === 'POST') return {action: 'call', text: `queued a call to ${name}`};
  if ((sub || '').startsWith('/calls/') && method === 'DELETE') return {action: 'call', text: `cancelled a queued call to ${name}`};
  if (sub === '/ota') return {action: 'firmware', text: `updated the firmware of ${name}`};
  if (sub === '/ota/commit') return {action: 'firmware', text: `committed the firmware of ${name}`};
  if (path === '/api/v2/keys' && method === 'POST') return {action: 'keys', text: 'created an API key'};
  if ((m = /^\/api\/v2\/keys\/(.+)$/.exec(path)) && method === 'DELETE') return {action: 'keys', text: `revoked key ${decodeURIComponent(m[1])}`};
  if (path === '/api/v2/accounts' && method === 'POST') return {action: 'accounts', text: 'created an account'};
  if (path === '/api/v2/session' && method === 'POST') return {action: 'session', text: 'stayed signed in to the dashboard on a browser'};
  return {action: 'other', text: `${method} ${path}`};
}

// The filters above the table: {element, apply()}; rows carry
// data-device, data-key and data-action.
export function auditFilters(tbody, keyNames, devices) {
  const device = h('select', {}, h('option', {value: ''}, 'All devices'));
  const key = h('select', {}, h('option', {value: ''}, 'All keys'));
  const action = h('select', {}, h('option', {value: ''}, 'All actions'),
    ACTIONS.map(([value, label]) => h('option', {value}, label)));
  const status = h('p', {class: 'count', role: 'status'});
  const element = h('form', {class: 'audit-filters', onsubmit: (e) => e.preventDefault()},
    field('Device', device).field, field('Key', key).field, field('Action', action).field, status);

  function options() {
    const rows = [...tbody.children];
    const seenDevices = [...new Set(rows.map((r) => r.dataset.device).filter(Boolean))];
    const seenKeys = [...new Set(rows.map((r) => r.dataset.key))];
    const keep = (select, values, label) => {
      const chosen = select.value;
      replace(select, select.firstElementChild, values.map((v) => h('option', {value: v}, label(v))));
      select.value = values.includes(chosen) ? chosen : '';
    };
    keep(device, seenDevices, (id) => (devices.get(id) && devices.get(id).name) || id);
    keep(key, seenKeys, (id) => (keyNames.get(id) ? `${keyNames.get(id)} (${id})` : id));
  }

  function apply() {
    options();
    let shown = 0;
    const rows = [...tbody.children];
    for (const row of rows) {
      row.hidden = Boolean((device.value && row.dataset.device !== device.value)
        || (key.value && row.dataset.key !== key.value)
        || (action.value && row.dataset.action !== action.value));
      if (!row.hidden) shown += 1;
    }
    const filtering = device.value || key.value || action.value;
    status.textContent = filtering ? `${shown} of the ${rows.length} entries loaded match.` : '';
  }

  for (const select of [device, key, action]) select.addEventListener('change', apply);
  return {element, apply};
}
