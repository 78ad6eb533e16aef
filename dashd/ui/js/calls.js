// The queued calls of a device page: its calls, newest first, with their
// state, when they were made and what came of them (the result, or the
// error), kept live from call.status events; older ones a page at a time;
// a queued call can be cancelled. Calls are queued from the RPC console
// ("Queue until the device is back").

import {api, describe, encode} from './api.js';
import {announce, h, messageArea, showMessage} from './dom.js';
import {timeEl} from './format.js';

const PAGE = 20;

const STATE_TEXT = {
  queued: 'Queued',
  sent: 'Sent',
  succeeded: 'Succeeded',
  failed: 'Failed',
  timed_out: 'Timed out',
  lost: 'Lost',
  expired: 'Expired',
  cancelled: 'Cancelled',
};

function json(value) {
  return value === undefined ? '' : JSON.stringify(value);
}

// What came of a call, in a line.
export function outcomeText(call) {
  switch (call.state) {
    case 'succeeded': return json(call.result);
    case 'failed': return `error ${call.error.code}: ${call.error.message}`;
    case 'timed_out': return call.error ? call.error.message : 'no answer in time';
    case 'lost': return call.error ? call.error.message : 'the connection went before an answer';
    case 'expired': return 'the device was not back before it expired';
    case 'cancelled': return 'cancelled before it was sent';
    case 'sent': return 'waiting for the answer';
    default: return `waits until ${new Date(call.expires * 1000).toLocaleString()}`;
  }
}

export function callsPart(ctx, deviceId, canCancel) {
  const message = messageArea();
  const tbody = h('tbody');
  const table = h('table', {class: 'calls'},
    h('caption', {class: 'visually-hidden'}, 'Queued calls of this device, newest first'),
    h('thead', {}, h('tr', {},
      ['Method', 'State', 'Made', 'Outcome', 'Actions'].map((t) => h('th', {scope: 'col'},
        t === 'Actions' ? h('span', {class: 'visually-hidden'}, t) : t)))),
    tbody);
  const empty = h('p', {class: 'muted', hidden: true}, 'No queued calls.');
  table.hidden = true;
  const older = h('button', {type: 'button', class: 'secondary small', hidden: true}, 'Load older calls');
  const rows = new Map();
  let cursor = null;

  function show(call, atTop) {
    const old = rows.get(call.id);
    const cancel = call.state === 'queued' && canCancel(call.method)
      ? h('button', {type: 'button', class: 'secondary small', 'aria-label': `Cancel ${call.method} (${call.id})`,
        onclick: () => cancelCall(call)}, 'Cancel')
      : null;
    const tr = h('tr', {dataset: {callId: call.id}, class: `call ${call.state}`},
      h('td', {'data-label': 'Method'}, h('code', {}, call.method)),
      h('td', {'data-label': 'State'}, h('span', {class: `state ${call.state}`}, STATE_TEXT[call.state] || call.state),
        call.attempts.length > 1 ? h('span', {class: 'muted'}, ` (${call.attempts.length} attempts)`) : null),
      h('td', {'data-label': 'Made'}, timeEl(call.created)),
      h('td', {'data-label': 'Outcome', class: 'outcome'}, outcomeText(call)),
      h('td', {class: 'row-actions'}, cancel));
    if (old) {
      old.replaceWith(tr);
    } else if (atTop) {
      tbody.prepend(tr);
    } else {
      tbody.append(tr);
    }
    rows.set(call.id, tr);
    empty.hidden = rows.size > 0;
    table.hidden = rows.size === 0;
  }

  async function cancelCall(call) {
    try {
      const after = await api('DELETE', `/calls/${encode(call.id)}`);
      show(after, false);
      announce(`${call.method} cancelled`);
    } catch (error) {
      showMessage(message, `Not cancelled. ${describe(error)}`, 'error');
    }
  }

  async function load(more) {
    let path = `/devices/${encode(deviceId)}/calls?limit=${PAGE}`;
    if (more && cursor) path += `&cursor=${encode(cursor)}`;
    try {
      const reply = await api('GET', path, undefined, {withStatus: true});
      if (!ctx.alive) return;
      if (!more) {
        rows.clear();
        tbody.replaceChildren();
      }
      for (const call of reply.body) show(call, false);
      cursor = reply.headers.get('X-Next-Cursor');
      older.hidden = !cursor;
      empty.hidden = rows.size > 0;
      table.hidden = rows.size === 0;
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
    }
  }
  older.addEventListener('click', () => load(true));

  function onEvent(event) {
    if (event.name === 'call.status' && event.data && event.data.id) {
      const known = rows.has(event.data.id);
      show(event.data, !known);
      if (known && event.data.state !== 'queued' && event.data.state !== 'sent') {
        announce(`${event.data.method}: ${STATE_TEXT[event.data.state] || event.data.state}`);
      }
    } else if (event.name === 'stream.reconnected') {
      load(false);
    }
  }

  load(false);
  const element = h('div', {},
    h('p', {class: 'hint'}, 'Calls queued for this device (from the RPC console, or POST /devices/:id/calls): each is sent once, in order, when the device is online.'),
    message,
    h('div', {class: 'table-wrap'}, table), empty, older);
  return {element, onEvent, reload: () => load(false), show};
}
