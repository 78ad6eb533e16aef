// The device log of a device page: its stored history (POST /api/v2/logs:
// log lines, its own notifications, when it came and went, how firmware
// updates went) from the newest back, a page at a time ("Load older"),
// joined with the live tail of the notification stream (calls made to the
// device too, which are not stored).
// Going back uses pager.js, with the stored events since the oldest one
// shown counted as they arrive.

import {api, describe} from './api.js';
import {announce, h} from './dom.js';
import {pageBack} from './pager.js';

const PAGE = 100;
// Lines kept in view; beyond it the oldest go.
const LOG_LIMIT = 1000;

// Which events dashd stores (dashd.app.history.stored).
export function isStored(name) {
  if (name === 'rpc.out.Heartbeat') return false;
  return name === 'online' || name === 'offline' || name === 'ota.status' || name.startsWith('rpc.out.') ||
    name === 'alarm.raised' || name === 'alarm.cleared' || name === 'alarm.acknowledged';
}

function json(data) {
  return data === undefined || data === null ? '' : JSON.stringify(data);
}

// {kind, text} for a line, or null for events the log does not show.
export function describeEvent(name, data) {
  if (name === 'rpc.out.Log') {
    // The device's own sequence number and time, beside dashd's.
    const own = [];
    if (data && Number.isFinite(data.seq)) own.push(`#${data.seq}`);
    if (data && Number.isFinite(data.t)) own.push(`device time ${data.t}`);
    return {
      kind: data && data.fd === 2 ? 'stderr' : 'log',
      text: data && typeof data.data === 'string' ? data.data.replace(/\n$/, '') : json(data),
      device: own.join(', '),
    };
  }
  if (name.startsWith('rpc.out.')) return {kind: 'notification', text: `${name.slice(8)} ${json(data)}`.trim()};
  if (name.startsWith('rpc.in.')) return {kind: 'call', text: `→ ${name.slice(7)} ${json(data)}`.trim()};
  if (name === 'online') {
    return {kind: 'state', text: data && data.replaced
      ? `connected, replacing the connection from ${data.replaced} (two devices with one token, or one that reconnected before its old connection was found dead)`
      : 'connected'};
  }
  if (name === 'offline') return {kind: 'state', text: `disconnected${data && data.reason ? `: ${data.reason}` : ''}`};
  if (name === 'ota.status' && data && typeof data === 'object') {
    let text = `update ${data.file || ''}: ${data.state}`;
    if (data.state === 'failed' && data.reason) text += ` (${data.reason})`;
    if (data.state === 'uncommitted' || data.state === 'committed') text += ` (fw_id ${data.fw_id})`;
    return {kind: 'firmware', text};
  }
  if (name.startsWith('alarm.') && data && typeof data === 'object') {
    const what = {'alarm.raised': 'raised', 'alarm.cleared': 'cleared', 'alarm.acknowledged': 'acknowledged'}[name];
    if (!what) return null;
    let text = `alarm ${what}: ${data.rule || data.rule_id || ''} (${data.severity})`;
    if (name === 'alarm.raised' && data.message) text += ` ${data.message}`;
    if (name === 'alarm.acknowledged' && data.note) text += ` note: ${data.note}`;
    return {kind: 'alarm', text};
  }
  return null;
}

function same(stored, live) {
  return stored.name === live.name && JSON.stringify(stored.data) === JSON.stringify(live.data);
}

export function logPart(ctx, deviceId) {
  // The live region (and what scrolls) around the list, not on it:
  // role=log on the <ol> itself would take its list semantics and leave its
  // items orphaned.
  const list = h('ol', {});
  const region = h('div', {class: 'log', role: 'log', 'aria-label': 'Device log', tabindex: '0'}, list);
  const older = h('button', {type: 'button', class: 'secondary small'}, 'Load older');
  const pause = h('button', {type: 'button', class: 'secondary small', 'aria-pressed': 'false'}, 'Pause');
  const clear = h('button', {type: 'button', class: 'secondary small'}, 'Clear');
  // What the stored part holds; said aloud when the user asked.
  const note = h('p', {class: 'hint log-note'});

  let paused = false;
  // Lines that came while paused, shown on resuming.
  let held = [];
  // The offset of the oldest stored event loaded, and how many stored
  // events there are from it on (loaded, and live since).
  let boundary = null;
  let known = 0;
  // Nothing older is stored; the view dropped stored lines.
  let complete = false;
  let trimmed = false;
  // Live events that came while the first page was on its way.
  let waiting = [];

  function line(name, data, when, offset) {
    const what = describeEvent(name, data);
    if (!what) return null;
    const d = when instanceof Date ? when : new Date(when * 1000);
    const today = d.toDateString() === new Date().toDateString();
    const li = h('li', {class: `log-${what.kind}`, dataset: offset === undefined ? {} : {offset: String(offset)}},
      h('time', {datetime: d.toISOString(), title: d.toLocaleString()}, today ? d.toLocaleTimeString() : d.toLocaleString()), ' ',
      h('span', {class: 'log-kind'}, what.kind), ' ',
      h('span', {class: 'log-text'}, what.text),
      what.device ? h('span', {class: 'log-device'}, ` (${what.device})`) : null);
    return li;
  }

  function append(li) {
    if (!li) return;
    const atBottom = region.scrollTop + region.clientHeight >= region.scrollHeight - 4;
    list.append(li);
    trim();
    if (atBottom) region.scrollTop = region.scrollHeight;
  }

  function prepend(lines) {
    const fromBottom = region.scrollHeight - region.scrollTop;
    list.prepend(...lines);
    region.scrollTop = region.scrollHeight - fromBottom;
  }

  // The oldest lines go first. Once stored ones went, the view no longer
  // runs from the boundary on: it stops offering older ones.
  function trim() {
    while (list.children.length > LOG_LIMIT) {
      const top = list.firstElementChild;
      top.remove();
      if (top.dataset.offset !== undefined) trimmed = true;
    }
    showState();
  }

  function showState() {
    older.hidden = complete || trimmed || boundary === null;
    if (trimmed) {
      note.textContent = `This view keeps the last ${LOG_LIMIT} lines; older ones left it. Open the page again to go back through the stored log.`;
    }
  }

  async function logs(start, limit) {
    return api('POST', '/logs', {device_id: deviceId, start, limit});
  }

  async function loadLatest() {
    note.textContent = 'Loading the stored log…';
    let events = [];
    let failed = null;
    try {
      events = (await logs(-PAGE, PAGE)).events;
    } catch (error) {
      failed = error;
    }
    if (!ctx.alive) return;
    // Events stored before the query ran came live too: the newest stored
    // ones and the first live ones are the same events.
    const live = waiting;
    waiting = null;
    const liveStored = live.filter((e) => isStored(e.name));
    let overlap = Math.min(events.length, liveStored.length);
    while (overlap > 0 && !events.slice(events.length - overlap).every((e, i) => same(e, liveStored[i]))) overlap -= 1;
    let skip = overlap;
    const fresh = live.filter((e) => !(isStored(e.name) && skip-- > 0));
    prepend(events.map((e) => line(e.name, e.data, e.timestamp, e.offset)).filter(Boolean));
    for (const e of fresh) showLive(line(e.name, e.data, e.when));
    if (events.length) boundary = events[0].offset;
    known = events.length + liveStored.length - overlap;
    complete = !failed && events.length < PAGE;
    if (failed) {
      note.textContent = `The stored log could not be read: ${describe(failed)} New lines still show as they come.`;
    } else {
      note.textContent = events.length
        ? `${complete ? 'Every stored event is shown' : `The last ${events.length} stored events are shown`}; new ones follow as they come.`
        : 'Nothing is stored for this device yet; new lines show as they come.';
    }
    region.scrollTop = region.scrollHeight;
    showState();
  }

  older.addEventListener('click', async () => {
    if (boundary === null) return;
    older.disabled = true;
    note.textContent = 'Loading older events…';
    try {
      const fetch = async (start, limit) => {
        const reply = await logs(start, limit);
        return {items: reply.events, next: reply.next};
      };
      const {items: events, all} = await pageBack(fetch, boundary, known, PAGE);
      if (!ctx.alive) return;
      prepend(events.map((e) => line(e.name, e.data, e.timestamp, e.offset)).filter(Boolean));
      if (events.length) {
        boundary = events[0].offset;
        known += events.length;
      }
      complete = all;
      const said = events.length
        ? `Loaded ${events.length} older event${events.length === 1 ? '' : 's'}${all ? ': every stored event is shown' : ''}.`
        : 'No older events are stored.';
      note.textContent = said;
      announce(said);
    } catch (error) {
      if (!ctx.alive) return;
      note.textContent = `Older events could not be loaded: ${describe(error)}`;
      announce(note.textContent);
    } finally {
      older.disabled = false;
      showState();
      // The button may have gone: keep the keyboard in the log.
      if (older.hidden) region.focus();
    }
  });

  function showLive(li) {
    if (!li) return;
    if (!paused) {
      append(li);
      return;
    }
    held.push(li);
    pause.textContent = `Resume (${held.length} new)`;
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused && held.length) {
      const lines = held;
      held = [];
      for (const li of lines) append(li);
      announce(`${lines.length} line${lines.length === 1 ? '' : 's'} that came while paused shown.`);
    }
  });
  clear.addEventListener('click', () => list.replaceChildren());

  function onEvent(event) {
    if (!describeEvent(event.name, event.data)) return;
    const live = {name: event.name, data: event.data, when: new Date()};
    if (waiting) {
      waiting.push(live);
      return;
    }
    if (isStored(event.name)) known += 1;
    showLive(line(live.name, live.data, live.when));
  }

  older.hidden = true;
  const element = h('div', {},
    h('p', {class: 'hint'}, 'What dashd stored of this device (log lines, its notifications, connections and firmware updates), newest last, then what happens while this page is open, calls made to the device included.'),
    h('div', {class: 'actions left'}, older, pause, clear),
    note,
    region);
  loadLatest();
  return {element, onEvent};
}
