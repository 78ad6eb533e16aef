// The Alarms page (#/alarms): the alarms the key sees, newest first, with
// filters (state, severity, device) and, for keys that may, Acknowledge
// (with a note) and Clear; kept current by the alarm.* notifications. Below
// them the alarm rules (admin keys): each with its condition, and an
// editor whose device query shows the devices it matches as it is typed.

import {api, describe, encode} from './api.js';
import {announce, clearMessage, field, h, messageArea, replace, showMessage} from './dom.js';
import {openDialog, confirmDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {SEVERITIES} from './alarmbar.js';

const PAGE = 50;
const KINDS = {
  threshold: 'a reported value beyond a threshold',
  stale: 'a reported key not reported for a while',
  offline: 'offline for longer than',
  ota_failed: 'a firmware update failed',
  log: 'a log line matching a pattern',
  call_failures: 'calls to the device failing',
};

export function severityBadge(severity) {
  return h('span', {class: `badge severity ${severity}`}, severity);
}

function conditionText(c) {
  switch (c.kind) {
    case 'threshold': {
      const side = 'above' in c ? 'above' : 'below';
      return `${c.key} ${side} ${c[side]} (clears at ${c.clear})${c.for ? ` for ${c.for} s` : ''}`;
    }
    case 'stale': return `${c.key} not reported for ${c.seconds} s`;
    case 'offline': return `offline for more than ${c.seconds} s`;
    case 'ota_failed': return 'a firmware update failed';
    case 'log': return `a log line matches /${c.pattern}/${c.clear_after ? `, clears after ${c.clear_after} s` : ''}`;
    case 'call_failures': return `${Math.round(c.rate * 100)}% of calls fail in ${c.window} s (at least ${c.min_calls})`;
    default: return c.kind;
  }
}

// Acknowledge with a note: resolves with the alarm, or undefined.
export function acknowledgeDialog(alarm) {
  const note = h('textarea', {rows: '3', maxlength: '1000', autofocus: true});
  const error = messageArea();
  return openDialog({
    title: 'Acknowledge alarm',
    build: (close) => h('form', {
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          close(await api('POST', `/alarms/${encode(alarm.id)}/acknowledge`, {note: note.value || null}));
        } catch (err) {
          showMessage(error, describe(err), 'error');
        }
      },
    },
    h('p', {}, alarm.message),
    field('Note (what is being done about it)', note).field,
    error,
    h('div', {class: 'actions'},
      h('button', {type: 'submit'}, 'Acknowledge'),
      h('button', {type: 'button', class: 'secondary', onclick: () => close()}, 'Cancel'))),
  }).done;
}

// One alarm as a table row, with its actions. onChange(alarm) after one.
export function alarmRow(alarm, ctx, onChange, {device = true} = {}) {
  const td = (label, ...content) => h('td', {'data-label': label}, h('span', {class: 'cell'}, content));
  const canAct = !ctx.perms.readOnly;
  const actions = [];
  if (canAct && !alarm.acknowledged) {
    actions.push(h('button', {type: 'button', class: 'secondary small', onclick: async () => {
      const done = await acknowledgeDialog(alarm);
      if (done) { announce('Alarm acknowledged'); onChange(done); }
    }}, 'Acknowledge'));
  }
  if (canAct && alarm.state === 'active') {
    actions.push(h('button', {type: 'button', class: 'secondary small', onclick: async (e) => {
      e.target.disabled = true;
      try {
        const done = await api('POST', `/alarms/${encode(alarm.id)}/clear`, {});
        announce('Alarm cleared');
        onChange(done);
      } catch (err) {
        e.target.disabled = false;
        window.alert(describe(err));
      }
    }}, 'Clear'));
  }
  const state = h('span', {}, alarm.state === 'active' ? h('strong', {}, 'active') : 'cleared',
    alarm.acknowledged ? h('span', {class: 'muted'}, ` · acknowledged by ${alarm.acknowledged_by || '?'}`) : null,
    alarm.note ? h('span', {class: 'alarm-note'}, ` “${alarm.note}”`) : null);
  return h('tr', {class: `alarm ${alarm.state}`, dataset: {alarmId: alarm.id}},
    td('Severity', severityBadge(alarm.severity)),
    device ? td('Device', h('a', {href: `#/devices/${encode(alarm.device_id)}`}, alarm.device_id)) : null,
    td('Alarm', alarm.rule ? h('strong', {}, `${alarm.rule}: `) : null, alarm.message),
    td('Raised', timeEl(alarm.raised)),
    td('State', state),
    td('Actions', actions.length ? actions : h('span', {class: 'muted'}, '—')));
}

export function alarmTable(caption, {device = true} = {}) {
  const tbody = h('tbody');
  const heads = ['Severity', device ? 'Device' : null, 'Alarm', 'Raised', 'State', 'Actions'].filter(Boolean);
  const table = h('table', {class: 'alarms'},
    h('caption', {class: 'visually-hidden'}, caption),
    h('thead', {}, h('tr', {}, heads.map((t) => h('th', {scope: 'col'}, t)))),
    tbody);
  return {table, tbody};
}

export function mount(main, ctx) {
  const message = messageArea();
  const state = h('select', {}, h('option', {value: 'active'}, 'Active'),
    h('option', {value: 'cleared'}, 'Cleared'), h('option', {value: ''}, 'All'));
  const severity = h('select', {}, h('option', {value: ''}, 'Any severity'),
    SEVERITIES.map((s) => h('option', {value: s}, s)));
  const device = h('input', {type: 'search', placeholder: 'device ID', autocomplete: 'off'});
  const note = h('p', {class: 'count', role: 'status'});
  const {table, tbody} = alarmTable('Alarms, newest first');
  const older = h('button', {type: 'button', class: 'secondary'}, 'Load older');
  older.hidden = true;
  let cursor = null;
  let shown = 0;

  function query(after) {
    const args = [`limit=${PAGE}`];
    if (state.value) args.push(`state=${state.value}`);
    if (severity.value) args.push(`severity=${severity.value}`);
    if (device.value.trim()) args.push(`device=${encode(device.value.trim())}`);
    if (after) args.push(`cursor=${after}`);
    return `/alarms?${args.join('&')}`;
  }

  async function load(more = false) {
    try {
      const reply = await api('GET', query(more ? cursor : null), undefined, {withStatus: true});
      if (!ctx.alive) return;
      clearMessage(message);
      const rows = reply.body.map((a) => alarmRow(a, ctx, () => load()));
      if (more) tbody.append(...rows); else replace(tbody, rows);
      shown = more ? shown + rows.length : rows.length;
      cursor = reply.headers.get('X-Next-Cursor');
      older.hidden = !cursor;
      note.textContent = shown ? `${shown} alarm${shown === 1 ? '' : 's'} shown, newest first.` : 'No alarms match.';
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
    }
  }

  for (const input of [state, severity]) input.addEventListener('change', () => load());
  let typing = null;
  device.addEventListener('input', () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => load(), 300);
  });
  older.addEventListener('click', () => load(true));
  let pending = null;
  ctx.listen((event) => {
    if (!event.name || !event.name.startsWith('alarm.') || pending !== null) return;
    pending = window.setTimeout(() => { pending = null; if (ctx.alive) load(); }, 200);
  });

  main.append(
    h('h1', {}, 'Alarms'),
    message,
    h('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); load(); }},
      field('State', state).field, field('Severity', severity).field, field('Device', device).field),
    note, table, older);
  load();
  if (ctx.perms.admin) main.append(rulesSection(ctx));
  return 'Alarms';
}

// Rules

function rulesSection(ctx) {
  const message = messageArea();
  const list = h('ul', {class: 'rules'});
  const add = h('button', {type: 'button'}, 'New rule');
  const section = h('section', {class: 'card rules-card', 'aria-labelledby': 'rules-title'},
    h('h2', {id: 'rules-title'}, 'Alarm rules'), message, list, add);

  async function load() {
    try {
      const rules = await api('GET', '/alarm-rules');
      if (!ctx.alive) return;
      replace(list, rules.length ? rules.map(item) : h('li', {class: 'muted'}, 'No rules yet.'));
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
    }
  }

  function item(rule) {
    return h('li', {class: 'rule', dataset: {ruleId: rule.id}},
      severityBadge(rule.severity), ' ', h('strong', {}, rule.name),
      rule.enabled ? null : h('span', {class: 'muted'}, ' (disabled)'),
      h('div', {class: 'muted'}, conditionText(rule.condition), ' · ',
        rule.where ? h('code', {}, rule.where) : 'every device'),
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'secondary small', onclick: () => edit(rule)}, 'Edit'),
        h('button', {type: 'button', class: 'secondary small', onclick: async () => {
          const ok = await confirmDialog({title: `Delete rule ${rule.name}?`,
            body: 'Its active alarms are cleared (and kept as history).', confirmLabel: 'Delete'});
          if (!ok) return;
          try {
            await api('DELETE', `/alarm-rules/${encode(rule.id)}`);
            announce('Rule deleted');
            load();
          } catch (error) { showMessage(message, describe(error), 'error'); }
        }}, 'Delete')));
  }

  async function edit(rule) {
    const saved = await ruleEditor(rule);
    if (saved) { announce('Rule saved'); load(); }
  }
  add.addEventListener('click', () => edit(null));
  load();
  return section;
}

function number(value) {
  return h('input', {type: 'number', step: 'any', value: value === undefined ? '' : String(value)});
}

// The editor: resolves with the saved rule, or undefined.
export function ruleEditor(rule) {
  const c = rule ? rule.condition : {kind: 'threshold'};
  const name = h('input', {type: 'text', required: true, maxlength: '200', value: rule ? rule.name : '', autofocus: true});
  const severity = h('select', {}, SEVERITIES.map((s) => h('option', {value: s, selected: rule ? rule.severity === s : s === 'major'}, s)));
  const where = h('input', {type: 'text', value: rule && rule.where ? rule.where : '', placeholder: 'shadow.tags.site = "berlin"', autocomplete: 'off'});
  const preview = h('div', {class: 'preview', role: 'status', 'aria-live': 'polite'});
  const kind = h('select', {}, Object.entries(KINDS).map(([k, text]) => h('option', {value: k, selected: c.kind === k}, `${k}: ${text}`)));
  const inputs = {
    key: h('input', {type: 'text', value: c.key || '', placeholder: 'env.temp'}),
    side: h('select', {}, h('option', {value: 'above', selected: !('below' in c)}, 'above'), h('option', {value: 'below', selected: 'below' in c}, 'below')),
    limit: number(c.above !== undefined ? c.above : c.below),
    clear: number(c.clear),
    for: number(c.for),
    seconds: number(c.seconds),
    pattern: h('input', {type: 'text', value: c.pattern || ''}),
    clear_after: number(c.clear_after),
    rate: number(c.rate),
    clear_rate: number(c.clear_rate),
    window: number(c.window),
    min_calls: number(c.min_calls),
  };
  const FIELDS = {
    threshold: [['key', 'Reported key'], ['side', 'Raised when the value is'], ['limit', 'Threshold'], ['clear', 'Cleared at (hysteresis)'], ['for', 'For at least (seconds)']],
    stale: [['key', 'Reported key'], ['seconds', 'Not reported for (seconds)']],
    offline: [['seconds', 'Offline for more than (seconds)']],
    ota_failed: [],
    log: [['pattern', 'Pattern (regular expression)'], ['clear_after', 'Cleared after (seconds without a match)']],
    call_failures: [['rate', 'Failure rate (0 to 1)'], ['clear_rate', 'Cleared below'], ['window', 'Window (seconds)'], ['min_calls', 'At least this many calls']],
  };
  const fields = Object.fromEntries(Object.entries(inputs).map(([k, input]) => [k, field(k, input)]));
  const conditionBox = h('div', {class: 'condition'});
  function showFields() {
    replace(conditionBox, FIELDS[kind.value].map(([k, label]) => {
      fields[k].field.querySelector('label').textContent = label;
      return fields[k].field;
    }));
  }
  kind.addEventListener('change', showFields);
  showFields();

  let previewing = null;
  async function showPreview() {
    const text = where.value.trim();
    const q = text ? `?where=${encode(text)}` : '';
    try {
      const [count, devices] = await Promise.all([
        api('GET', `/devices/count${q}`),
        api('GET', `/devices${q}${q ? '&' : '?'}limit=10`)]);
      replace(preview, h('p', {}, `${count.count} device${count.count === 1 ? '' : 's'} match now`,
        devices.length ? ': ' : '.'),
      devices.length ? h('ul', {class: 'matched'}, devices.map((d) => h('li', {}, d.name || d.id))) : null,
      count.count > devices.length ? h('p', {class: 'muted'}, `… and ${count.count - devices.length} more`) : null);
    } catch (error) {
      replace(preview, h('p', {class: 'error'}, describe(error)));
    }
  }
  where.addEventListener('input', () => {
    window.clearTimeout(previewing);
    previewing = window.setTimeout(showPreview, 300);
  });
  showPreview();

  function condition() {
    const k = kind.value;
    const out = {kind: k};
    const num = (input) => (input.value === '' ? undefined : Number(input.value));
    const put = (name, value) => { if (value !== undefined && value !== '') out[name] = value; };
    if (k === 'threshold') {
      put('key', inputs.key.value.trim());
      put(inputs.side.value, num(inputs.limit));
      put('clear', num(inputs.clear));
      put('for', num(inputs.for));
    } else if (k === 'stale') {
      put('key', inputs.key.value.trim());
      put('seconds', num(inputs.seconds));
    } else if (k === 'offline') {
      put('seconds', num(inputs.seconds));
    } else if (k === 'log') {
      put('pattern', inputs.pattern.value);
      put('clear_after', num(inputs.clear_after));
    } else if (k === 'call_failures') {
      put('rate', num(inputs.rate));
      put('clear_rate', num(inputs.clear_rate));
      put('window', num(inputs.window));
      put('min_calls', num(inputs.min_calls));
    }
    return out;
  }

  const error = messageArea();
  return openDialog({
    title: rule ? `Edit rule ${rule.name}` : 'New alarm rule',
    className: 'wide',
    build: (close) => h('form', {
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {name: name.value, severity: severity.value, where: where.value.trim() || null, condition: condition()};
        try {
          const saved = rule
            ? await api('POST', `/alarm-rules/${encode(rule.id)}`, body)
            : await api('POST', '/alarm-rules', body);
          close(saved);
        } catch (err) {
          showMessage(error, describe(err), 'error');
        }
      },
    },
    field('Name', name).field,
    field('Severity', severity).field,
    field('Devices (a device query; empty: every device)', where, 'Evaluated live: devices that start matching are covered.').field,
    preview,
    field('Condition', kind).field,
    conditionBox,
    error,
    h('div', {class: 'actions'},
      h('button', {type: 'submit'}, 'Save rule'),
      h('button', {type: 'button', class: 'secondary', onclick: () => close()}, 'Cancel'))),
  }).done;
}
