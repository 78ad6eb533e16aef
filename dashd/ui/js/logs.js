// The fleet's log: what dashd stored of every device the key may see (POST
// /api/v2/logs without a device: log lines, the devices' notifications,
// connections, firmware updates), newest last, then what happens while
// the page is open (calls made to devices too). Filters: one device (asked
// of dashd), kinds of line, and a search through the lines shown. Pausing
// holds new lines back, and shows them all on resuming.

import {api, describe, encode} from './api.js';
import {announce, field, h, replace} from './dom.js';
import {describeEvent, isStored} from './devicelog.js';
import {pageBack} from './pager.js';

const PAGE = 200;
// Lines kept in view; beyond it the oldest go.
const LOG_LIMIT = 2000;
export const KINDS = [
  ['log', 'Log lines'],
  ['stderr', 'Errors (stderr)'],
  ['notification', 'Notifications'],
  ['state', 'Connections'],
  ['firmware', 'Firmware updates'],
  ['call', 'Calls'],
];

function same(a, b) {
  return a.id === b.id && a.name === b.name && JSON.stringify(a.data) === JSON.stringify(b.data);
}

export function mount(main, ctx) {
  if (!ctx.perms.seesLog) {
    main.append(h('h1', {}, 'Logs'),
      h('p', {class: 'message error', role: 'alert'}, `This ${ctx.me.kind} key may not read device logs.`));
    return 'Logs';
  }
  const names = new Map();
  const deviceSelect = h('select', {}, h('option', {value: ''}, 'All devices'));
  const deviceField = field('Device', deviceSelect);
  const search = field('Search', h('input', {type: 'search', autocomplete: 'off'}),
    'Words in the lines shown, their device or their kind.');
  const kindBoxes = KINDS.map(([kind, label]) => {
    const box = h('input', {type: 'checkbox', checked: true, value: kind, onchange: () => applyFilters()});
    return {kind, box, label: h('label', {class: 'choice'}, box, ` ${label}`)};
  });
  const kinds = h('fieldset', {class: 'log-kinds'}, h('legend', {}, 'Kinds'), kindBoxes.map((k) => k.label));
  const count = h('p', {class: 'count', role: 'status'});
  const note = h('p', {class: 'hint log-note'});
  const list = h('ol', {});
  const region = h('div', {class: 'log fleet-log', role: 'log', 'aria-label': 'Fleet log', tabindex: '0'}, list);
  const older = h('button', {type: 'button', class: 'secondary small', hidden: true}, 'Load older');
  const pause = h('button', {type: 'button', class: 'secondary small', 'aria-pressed': 'false'}, 'Pause');

  main.append(
    h('h1', {}, 'Logs'),
    h('p', {class: 'hint'}, 'What dashd stored of every device this key may see (log lines, notifications, connections and firmware updates), newest last, then what happens while this page is open.'),
    h('form', {class: 'log-filters', onsubmit: (e) => e.preventDefault()}, deviceField.field, search.field, kinds),
    h('div', {class: 'actions left'}, older, pause),
    count,
    note,
    region,
  );

  let device = '';
  let paused = false;
  let held = [];
  let boundary = null;
  let known = 0;
  let complete = false;
  let waiting = [];
  let generation = 0;

  function line(e) {
    const what = describeEvent(e.name, e.data);
    if (!what) return null;
    const d = e.timestamp !== undefined ? new Date(e.timestamp * 1000) : e.when;
    const today = d.toDateString() === new Date().toDateString();
    const name = names.get(e.id) || e.id;
    const li = h('li', {class: `log-${what.kind}`, dataset: {kind: what.kind, device: e.id}},
      h('time', {datetime: d.toISOString(), title: d.toLocaleString()}, today ? d.toLocaleTimeString() : d.toLocaleString()), ' ',
      h('a', {class: 'log-source', href: `#/devices/${encode(e.id)}/log`}, name), ' ',
      h('span', {class: 'log-kind'}, what.kind), ' ',
      h('span', {class: 'log-text'}, what.text),
      what.device ? h('span', {class: 'log-device'}, ` (${what.device})`) : null);
    li.dataset.search = `${name} ${e.id} ${what.kind} ${what.text}`.toLowerCase();
    return li;
  }

  function visible(li) {
    const words = search.input.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const kindOn = kindBoxes.some((k) => k.kind === li.dataset.kind && k.box.checked);
    return kindOn && words.every((w) => li.dataset.search.includes(w));
  }

  function applyFilters() {
    let shown = 0;
    for (const li of list.children) {
      li.hidden = !visible(li);
      if (!li.hidden) shown += 1;
    }
    const total = list.children.length;
    count.textContent = shown === total
      ? `${total} line${total === 1 ? '' : 's'}`
      : `${shown} of ${total} lines match the filters`;
  }

  function append(li) {
    if (!li) return;
    const atBottom = region.scrollTop + region.clientHeight >= region.scrollHeight - 4;
    li.hidden = !visible(li);
    list.append(li);
    while (list.children.length > LOG_LIMIT) {
      list.firstElementChild.remove();
      complete = false;
      boundary = null;
      older.hidden = true;
    }
    if (atBottom) region.scrollTop = region.scrollHeight;
  }

  function prepend(lines) {
    const fromBottom = region.scrollHeight - region.scrollTop;
    for (const li of lines) li.hidden = !visible(li);
    list.prepend(...lines);
    region.scrollTop = region.scrollHeight - fromBottom;
  }

  function logs(start, limit) {
    return api('POST', '/logs', device ? {device_id: device, start, limit} : {start, limit});
  }

  async function load() {
    generation += 1;
    const mine = generation;
    list.replaceChildren();
    held = [];
    waiting = [];
    boundary = null;
    complete = false;
    older.hidden = true;
    note.textContent = 'Loading the stored log…';
    let events = [];
    let failed = null;
    try {
      events = (await logs(-PAGE, PAGE)).events;
    } catch (error) {
      failed = error;
    }
    if (!ctx.alive || mine !== generation) return;
    // Events stored while the query ran came live too: not twice.
    const live = waiting;
    waiting = null;
    const recent = events.slice(-50);
    const fresh = live.filter((e) => !(isStored(e.name) && recent.some((s) => same(s, e))));
    prepend(events.map(line).filter(Boolean));
    for (const e of fresh) arrived(e);
    if (events.length) boundary = events[0].offset;
    known = events.length;
    complete = !failed && events.length < PAGE;
    older.hidden = complete || boundary === null;
    if (failed) note.textContent = `The stored log could not be read: ${describe(failed)} New lines still show as they come.`;
    else if (!events.length) note.textContent = 'Nothing is stored yet; new lines show as they come.';
    else note.textContent = `${complete ? 'Every stored event is shown' : `The last ${events.length} stored events are shown`}; new ones follow as they come.`;
    region.scrollTop = region.scrollHeight;
    applyFilters();
  }

  function arrived(e) {
    if (paused) {
      held.push(e);
      pause.textContent = `Resume (${held.length} new)`;
      return;
    }
    append(line(e));
    applyFilters();
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) {
      pause.textContent = 'Resume';
      return;
    }
    const lines = held;
    held = [];
    pause.textContent = 'Pause';
    for (const e of lines) append(line(e));
    applyFilters();
    if (lines.length) announce(`${lines.length} line${lines.length === 1 ? '' : 's'} that came while paused shown.`);
  });

  older.addEventListener('click', async () => {
    if (boundary === null) return;
    older.disabled = true;
    const mine = generation;
    try {
      const fetch = async (start, limit) => {
        const reply = await logs(start, limit);
        return {items: reply.events, next: reply.next};
      };
      const {items, all} = await pageBack(fetch, boundary, known, PAGE);
      if (!ctx.alive || mine !== generation) return;
      prepend(items.map(line).filter(Boolean));
      if (items.length) {
        boundary = items[0].offset;
        known += items.length;
      }
      complete = all;
      note.textContent = items.length ? `Loaded ${items.length} older events${all ? ': every stored event is shown' : ''}.` : 'No older events are stored.';
      announce(note.textContent);
      applyFilters();
    } catch (error) {
      note.textContent = `Older events could not be loaded: ${describe(error)}`;
    } finally {
      older.disabled = false;
      older.hidden = complete || boundary === null;
      if (older.hidden) region.focus();
    }
  });

  deviceSelect.addEventListener('change', () => {
    device = deviceSelect.value;
    load();
  });
  search.input.addEventListener('input', () => applyFilters());

  ctx.listen((event) => {
    if (!event.id || !describeEvent(event.name, event.data)) return;
    if (device && event.id !== device) return;
    const e = {id: event.id, name: event.name, data: event.data, when: new Date()};
    if (waiting) {
      waiting.push(e);
      return;
    }
    if (isStored(event.name)) known += 1;
    arrived(e);
  });

  api('GET', '/devices').then((list) => {
    if (!ctx.alive) return;
    for (const d of list) names.set(d.id, d.name || d.id);
    replace(deviceSelect, h('option', {value: ''}, 'All devices'),
      [...list].sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id))
        .map((d) => h('option', {value: d.id}, d.name || d.id)));
    deviceSelect.value = device;
    load();
  }, () => { if (ctx.alive) load(); });
  return 'Logs';
}
