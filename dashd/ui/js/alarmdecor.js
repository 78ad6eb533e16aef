// Active alarms where devices are shown, added to the pages of devices.js
// and device.js without changing them: on a device's page a section of
// its active alarms (acknowledge, clear), on the device list a badge with
// the count of each device's active alarms. Both follow the alarm.*
// notifications.

import {api, encode} from './api.js';
import {h, replace} from './dom.js';
import {alarmRow, alarmTable, severityBadge} from './alarms.js';
import {SEVERITIES} from './alarmbar.js';

function worst(alarms) {
  return SEVERITIES.find((s) => alarms.some((a) => a.severity === s));
}

function devicePage(main, ctx, id) {
  const {table, tbody} = alarmTable('Active alarms of this device', {device: false});
  const note = h('p', {class: 'muted'});
  const section = h('section', {class: 'card device-alarms', 'aria-labelledby': 'device-alarms-title'},
    h('h2', {id: 'device-alarms-title'}, 'Active alarms'), note, table);
  section.hidden = true;

  async function load() {
    let alarms;
    try {
      alarms = await api('GET', `/alarms?state=active&device=${encode(id)}&limit=100`);
    } catch (error) {
      return; // the page says what is wrong with the device
    }
    if (!ctx.alive) return;
    const head = main.querySelector('.page-head');
    if (head && !section.isConnected) head.after(section);
    section.hidden = alarms.length === 0;
    note.textContent = alarms.length ? '' : 'None.';
    replace(tbody, alarms.map((a) => alarmRow(a, ctx, load, {device: false})));
  }

  ctx.listen((event) => {
    if (event.name && event.name.startsWith('alarm.') && event.id === id) load();
  });
  load();
}

function deviceList(main, ctx) {
  let counts = new Map();

  function badge(row) {
    const id = row.dataset.deviceId;
    const mine = counts.get(id) || [];
    let el = row.querySelector('.alarm-badge');
    if (!mine.length) {
      if (el) el.remove();
      return;
    }
    const text = `${mine.length} alarm${mine.length === 1 ? '' : 's'}`;
    if (el && el.dataset.text === text) return;
    if (el) el.remove();
    el = severityBadge(worst(mine));
    el.classList.add('alarm-badge');
    el.dataset.text = text;
    el.textContent = text;
    el.title = mine.map((a) => a.message).join('\n');
    const cell = row.querySelector('td');
    if (cell) (cell.querySelector('.cell') || cell).append(' ', el);
  }

  function decorate() {
    for (const row of main.querySelectorAll('tr[data-device-id]')) badge(row);
  }

  async function load() {
    try {
      const alarms = await api('GET', '/alarms?state=active&limit=500');
      if (!ctx.alive) return;
      counts = new Map();
      for (const a of alarms) {
        if (!counts.has(a.device_id)) counts.set(a.device_id, []);
        counts.get(a.device_id).push(a);
      }
      decorate();
    } catch (error) {
      // The list works without its badges.
    }
  }

  // The list redraws its rows as devices change: badge the new ones.
  const observer = new MutationObserver(() => decorate());
  observer.observe(main, {childList: true, subtree: true});
  ctx.onDestroy(() => observer.disconnect());
  let pending = null;
  ctx.listen((event) => {
    if (!event.name || !event.name.startsWith('alarm.') || pending !== null) return;
    pending = window.setTimeout(() => { pending = null; if (ctx.alive) load(); }, 300);
  });
  load();
}

// Called by the router after a page is mounted.
export function decorate(main, ctx, route) {
  if (!route) return;
  if (route.name === 'device') devicePage(main, ctx, route.params.id);
  else if (route.name === 'devices') deviceList(main, ctx);
}
