// The alarm count, always in view in the top bar: the active alarms the
// key sees (GET /alarms/count), the most severe first, kept current by
// the alarm.* notifications (and a look every 30 s). A link to the Alarms
// page.

import {api} from './api.js';
import {h, replace} from './dom.js';

export const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'indeterminate'];

let state = null;

function slot() {
  let link = document.getElementById('alarm-count');
  if (!link) {
    link = h('a', {id: 'alarm-count', class: 'alarm-count', href: '#/alarms'});
    const session = document.getElementById('session');
    session.prepend(link);
  }
  return link;
}

function show(counts) {
  const link = slot();
  const total = counts.active;
  const worst = SEVERITIES.find((s) => (counts.by_severity[s] || 0) > 0);
  link.className = `alarm-count ${worst || 'none'}`;
  const parts = SEVERITIES.filter((s) => counts.by_severity[s]).map((s) => `${counts.by_severity[s]} ${s}`);
  replace(link, h('span', {class: 'alarm-dot', 'aria-hidden': 'true'}),
    total ? `${total} active alarm${total === 1 ? '' : 's'}` : 'No active alarms');
  link.title = parts.length ? parts.join(', ') : 'No active alarms';
  link.setAttribute('aria-label', total ? `Alarms: ${total} active (${parts.join(', ')})` : 'Alarms: none active');
}

async function refresh() {
  if (!state) return;
  try {
    const counts = await api('GET', '/alarms/count');
    if (state) show(counts);
  } catch (error) {
    // The page says what is wrong; the bar keeps its last count.
  }
}

// Start (again) for a signed-in key; notifier: its notification stream.
export function startAlarmBar(notifier) {
  stopAlarmBar();
  let pending = null;
  const unlisten = notifier ? notifier.listen((event) => {
    if (!event.name || !event.name.startsWith('alarm.')) return;
    // A burst of alarms is one request.
    if (pending === null) pending = window.setTimeout(() => { pending = null; refresh(); }, 200);
  }) : () => {};
  const timer = window.setInterval(refresh, 30000);
  state = {stop() { unlisten(); window.clearInterval(timer); if (pending !== null) window.clearTimeout(pending); }};
  slot().hidden = false;
  refresh();
}

export function stopAlarmBar() {
  if (state) state.stop();
  state = null;
  const link = document.getElementById('alarm-count');
  if (link) link.remove();
}
