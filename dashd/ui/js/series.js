// The stored data of a device page: "look before you read". First which
// reported keys dashd saves (tags.save in the shadow's tags; admins of the
// owning account add and remove them here), then the points stored for
// them (GET /devices/:id/data with filter, limit and skip): a plot for
// each numeric key (uPlot, as the charts over time), the other values listed, or every point in a table.
// Showing the latest points, the view follows what the device reports.

import {api, describe, encode} from './api.js';
import {announce, clearMessage, field, h, messageArea, replace, showMessage, uid} from './dom.js';
import {formatNumber, pointsChart} from './charts.js';

const MAX_LIMIT = 5000;
const DEFAULT_LIMIT = 200;
// Reported keys offered as suggestions, at most.
const MAX_SUGGESTIONS = 200;

export function savedKeys(device) {
  const tags = (device.shadow && device.shadow.tags) || {};
  return Array.isArray(tags.save) ? tags.save.filter((k) => typeof k === 'string') : [];
}

// Every dotted path of a reported state (objects and their members).
function paths(doc, prefix = '', out = []) {
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return out;
  for (const [k, v] of Object.entries(doc)) {
    const path = prefix ? `${prefix}.${k}` : k;
    out.push(path);
    if (out.length >= MAX_SUGGESTIONS) return out;
    paths(v, path, out);
  }
  return out;
}

function isNumber(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

// Strings keep their quotes: "12" is not 12.
function valueText(v) {
  return JSON.stringify(v);
}

function timeCell(seconds) {
  const d = new Date(seconds * 1000);
  return h('time', {datetime: d.toISOString()}, d.toLocaleString());
}

// device(): the device as the page knows it; setDevice(d): the page takes a
// device the API returned (after tags.save changed).
export function dataPart(ctx, deviceId, device, {canChangeSaved, setDevice}) {
  // Saved keys

  const savedList = h('ul', {class: 'saved-keys'});
  const savedNote = messageArea();
  const savedEmpty = h('p', {class: 'muted'});

  function renderSaved() {
    const keys = savedKeys(device());
    savedEmpty.hidden = keys.length > 0;
    savedEmpty.textContent = canChangeSaved()
      ? 'No reported keys are saved: dashd stores nothing for this device yet. Add one below.'
      : 'No reported keys are saved: dashd stores nothing for this device.';
    replace(savedList, keys.map((k) => h('li', {},
      h('code', {}, k),
      canChangeSaved()
        ? h('button', {type: 'button', class: 'secondary small', 'aria-label': `Stop saving ${k}`,
          onclick: () => changeSaved(keys.filter((x) => x !== k), `Stopped saving ${k}.`, null)}, 'Stop saving')
        : null)));
    savedList.hidden = keys.length === 0;
    if (suggestions) {
      const reported = (device().shadow && device().shadow.state && device().shadow.state.reported) || {};
      replace(suggestions, paths(reported).filter((p) => !keys.includes(p)).map((p) => h('option', {value: p})));
    }
  }

  // Send the new list with the version read: a concurrent change of the
  // shadow is refused (409) and said, never overwritten.
  async function changeSaved(keys, done, input) {
    const current = device();
    clearMessage(savedNote);
    try {
      const reply = await api('POST', `/devices/${encode(deviceId)}`, {
        shadow: {tags: {save: keys.length ? keys : null}, version: current.shadow.version},
      });
      if (!ctx.alive) return false;
      setDevice(reply);
      renderSaved();
      showMessage(savedNote, done, 'success');
      return true;
    } catch (error) {
      if (!ctx.alive) return false;
      if (error.status === 409) {
        try {
          setDevice(await api('GET', `/devices/${encode(deviceId)}`));
          renderSaved();
        } catch (e) {
          // The refusal below says enough.
        }
        showMessage(savedNote, `Not changed: the shadow changed since this page read it (someone else saved a newer version). The list above is the latest; try again. dashd said: ${error.message}.`, 'error');
      } else {
        showMessage(savedNote, `Not changed. ${describe(error)}`, 'error');
      }
      if (input) input.focus();
      return false;
    }
  }

  let suggestions = null;
  let addForm = null;
  if (canChangeSaved()) {
    suggestions = h('datalist', {id: uid('reported')});
    const input = h('input', {type: 'text', list: suggestions.id, autocomplete: 'off', spellcheck: 'false'});
    addForm = h('form', {class: 'inline', novalidate: true},
      field('Reported key to save', input, 'A key of the reported state; a dotted path for a nested one, e.g. env.temp.').field,
      suggestions,
      h('button', {type: 'submit', class: 'secondary'}, 'Save this key'));
    addForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      const keys = savedKeys(device());
      if (!key) {
        showMessage(savedNote, 'Enter the reported key to save.', 'error');
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      if (keys.includes(key)) {
        showMessage(savedNote, `${key} is saved already.`, 'info');
        input.focus();
        return;
      }
      input.setAttribute('aria-invalid', 'false');
      if (await changeSaved([...keys, key], `Saving ${key}: each time the device reports it, dashd stores it.`, input)) {
        input.value = '';
      } else {
        input.setAttribute('aria-invalid', 'true');
      }
    });
  }
  renderSaved();

  // Points

  const filter = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
  const limit = h('input', {type: 'number', min: 1, max: MAX_LIMIT, step: 1, value: DEFAULT_LIMIT, inputmode: 'numeric'});
  const skip = h('input', {type: 'number', step: 1, inputmode: 'numeric'});
  const show = h('button', {type: 'submit', class: 'primary'}, 'Show points');
  const viewName = uid('view');
  const asPlots = h('input', {type: 'radio', name: viewName, value: 'plots', checked: true, id: uid('view')});
  const asTable = h('input', {type: 'radio', name: viewName, value: 'table', id: uid('view')});
  const queryNote = messageArea();
  // Not a live region: it changes with every report the page follows;
  // what the user asked for is announced.
  const summary = h('p', {class: 'count'});
  const results = h('div', {class: 'data-results'});
  const query = h('form', {class: 'data-query', novalidate: true},
    field('Filter (optional)', filter, 'Only points whose key or value contains this text.').field,
    field('Points', limit, `How many, 1 to ${MAX_LIMIT}.`).field,
    field('Skip (optional)', skip, 'Where to start: a position, or negative to count from the end. Empty: the latest points.').field,
    h('div', {class: 'query-actions'}, show));
  const viewChoice = h('fieldset', {class: 'view-choice'}, h('legend', {}, 'Show as'),
    h('div', {class: 'radio'}, asPlots, h('label', {for: asPlots.id}, 'Plots')),
    h('div', {class: 'radio'}, asTable, h('label', {for: asTable.id}, 'Table')));

  let points = [];
  let asked = null; // the query the shown points answer
  let loading = false;

  function readQuery() {
    const n = limit.value.trim() === '' ? DEFAULT_LIMIT : Number(limit.value);
    if (!Number.isInteger(n) || n < 1 || n > MAX_LIMIT) {
      return {error: `Points must be a whole number from 1 to ${MAX_LIMIT}.`, input: limit};
    }
    let from = null;
    if (skip.value.trim() !== '') {
      from = Number(skip.value);
      if (!Number.isInteger(from)) return {error: 'Skip must be a whole number (negative counts from the end).', input: skip};
    }
    return {limit: n, skip: from, filter: filter.value};
  }

  // The query the form holds, checked; or the error said, and false.
  function submitted() {
    const q = readQuery();
    for (const input of [limit, skip]) input.setAttribute('aria-invalid', String(q.input === input));
    if (q.error) {
      showMessage(queryNote, q.error, 'error');
      q.input.focus();
      return false;
    }
    return q;
  }

  async function load(q, {quiet = false} = {}) {
    const args = [`limit=${q.limit}`];
    if (q.skip !== null) args.push(`skip=${q.skip}`);
    if (q.filter !== '') args.push(`filter=${encode(q.filter)}`);
    loading = true;
    show.disabled = true;
    try {
      const reply = await api('GET', `/devices/${encode(deviceId)}/data?${args.join('&')}`);
      if (!ctx.alive) return;
      points = Array.isArray(reply) ? reply : [];
      asked = q;
      clearMessage(queryNote);
      render();
      if (!quiet) announce(summary.textContent);
    } catch (error) {
      if (!ctx.alive) return;
      showMessage(queryNote, `No points shown. ${describe(error)}`, 'error');
      if (error.status === 400) filter.focus();
    } finally {
      loading = false;
      show.disabled = false;
    }
  }

  // The uPlot charts shown, ended before they are drawn again.
  let plots = [];
  function dropPlots() {
    for (const plot of plots) plot.destroy();
    plots = [];
  }

  function render() {
    if (!asked) return;
    const keys = [...new Set(points.map((p) => p.key))].sort();
    if (!points.length) {
      summary.textContent = asked.filter ? 'No stored points match the filter.' : 'No points are stored for this device.';
      dropPlots();
      results.replaceChildren();
      return;
    }
    const first = new Date(points[0].timestamp * 1000).toLocaleString();
    const last = new Date(points[points.length - 1].timestamp * 1000).toLocaleString();
    summary.textContent = `${points.length} point${points.length === 1 ? '' : 's'} of ${keys.length} key${keys.length === 1 ? '' : 's'}, from ${first} to ${last}${asked.skip === null ? ' (the latest)' : ''}.`;
    if (asTable.checked) {
      dropPlots();
      replace(results, pointsTable(points, 'Stored points, oldest first'));
      return;
    }
    const width = Math.max(240, (results.clientWidth || 640) - 2);
    dropPlots();
    const figures = [];
    const other = [];
    for (const key of keys) {
      const series = points.filter((p) => p.key === key);
      const numeric = series.filter((p) => isNumber(p.value));
      other.push(...series.filter((p) => !isNumber(p.value)));
      if (!numeric.length) continue;
      const plot = pointsChart(key, numeric, width);
      plots.push(plot);
      figures.push(h('figure', {class: 'plot-figure'},
        h('figcaption', {}, h('code', {}, key), ` — ${numeric.length} point${numeric.length === 1 ? '' : 's'}, last ${formatNumber(numeric[numeric.length - 1].value)}`),
        plot.element));
    }
    other.sort((a, b) => a.timestamp - b.timestamp);
    replace(results,
      figures.length ? figures : h('p', {class: 'muted'}, 'None of these points is a number: nothing to plot.'),
      other.length ? otherValues(other) : null);
  }

  // Listed under the plots: open when short, else as the user left it.
  let otherOpen = null;
  function otherValues(list) {
    const open = otherOpen === null ? list.length <= 10 : otherOpen;
    const details = h('details', {class: 'other-values', open},
      h('summary', {}, `Values that are not numbers (${list.length})`),
      pointsTable(list, 'Stored values that are not numbers'));
    details.addEventListener('toggle', () => { otherOpen = details.open; });
    return details;
  }

  function pointsTable(list, caption) {
    return h('div', {class: 'table-wrap'}, h('table', {class: 'points'},
      h('caption', {class: 'visually-hidden'}, caption),
      h('thead', {}, h('tr', {}, ['Time', 'Key', 'Value'].map((t) => h('th', {scope: 'col'}, t)))),
      h('tbody', {}, list.map((p) => h('tr', {},
        h('td', {'data-label': 'Time'}, timeCell(p.timestamp)),
        h('td', {'data-label': 'Key'}, h('code', {}, p.key)),
        h('td', {'data-label': 'Value', class: 'value'}, isNumber(p.value) ? formatNumber(p.value) : valueText(p.value)))))));
  }

  query.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = submitted();
    if (q) load(q);
  });
  for (const radio of [asPlots, asTable]) {
    radio.addEventListener('change', () => render());
  }

  // Plots are drawn at the width they get: again when it changes.
  let drawn = 0;
  let resizeTimer = null;
  const resized = new ResizeObserver(() => {
    const width = results.clientWidth;
    if (!width || Math.abs(width - drawn) < 8) return;
    drawn = width;
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => { if (ctx.alive && asPlots.checked) render(); }, 150);
  });
  resized.observe(results);
  ctx.onDestroy(() => {
    dropPlots();
    resized.disconnect();
    window.clearTimeout(resizeTimer);
  });

  // New points come with the device's reports: the latest are asked for
  // again (a moment later, once for a burst of reports), with the query
  // last sent, whatever the form holds meanwhile.
  let follow = null;
  function shadowChanged() {
    renderSaved();
    if (!asked || asked.skip !== null || loading || follow) return;
    follow = window.setTimeout(() => {
      follow = null;
      if (ctx.alive && !loading) load(asked, {quiet: true});
    }, 1000);
  }
  ctx.onDestroy(() => window.clearTimeout(follow));

  const element = h('div', {},
    h('h3', {}, 'Saved keys'),
    h('p', {class: 'hint'}, 'Each time the device reports one of these keys (tags.save in the shadow’s tags), dashd stores the value with the time.'),
    savedList, savedEmpty, addForm, savedNote,
    h('h3', {}, 'Stored points'),
    query, queryNote, viewChoice, summary, results);
  load(readQuery(), {quiet: true});
  return {element, shadowChanged};
}
