// Charts over time: the stored data of a device, and of other devices to
// compare it with, over the last hour, day or week or a custom range, read
// in one request of buckets (GET /data?from=&to=&bucket=&device=, each
// bucket's count, min, max and avg computed by dashd) and drawn with uPlot
// (shipped inside dashd under /ui/vendor/uplot, MIT). Drag across the chart
// to zoom in (dashd is asked again, in finer buckets); "Zoom out" goes back.
// Restricted keys see the keys their scope lets them read. The stored
// points under "Stored data" are drawn with the same (pointsChart).

import uPlot from '../vendor/uplot/uPlot.esm.js';
import {api, describe, encode} from './api.js';
import {add, clearMessage, field, h, messageArea, replace, showMessage, uid} from './dom.js';

export const RANGES = [
  ['hour', 'Last hour', 3600],
  ['day', 'Last day', 86400],
  ['week', 'Last week', 7 * 86400],
  ['custom', 'Custom', null],
];
// Bucket widths, seconds: the narrowest that keeps a bucket per two pixels.
const WIDTHS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
  21600, 43200, 86400];
const COLORS = ['#1f6fd1', '#c2410c', '#15803d', '#9333ea', '#b91c1c', '#0f766e', '#a16207',
  '#be185d'];
// Devices on one chart, at most (dashd answers 50 at most).
const MAX_DEVICES = 8;
// A chart of a range that ends now is read again this often (ms).
const FOLLOW_EVERY = 30000;

export function bucketFor(span, pixels) {
  const target = span / Math.max(60, pixels / 2);
  return WIDTHS.find((w) => w >= target) || Math.ceil(target / 86400) * 86400;
}

function loadStyles() {
  if (document.querySelector('link[data-charts]')) return;
  document.head.append(
    h('link', {rel: 'stylesheet', href: '/ui/vendor/uplot/uPlot.min.css', 'data-charts': ''}),
    h('link', {rel: 'stylesheet', href: '/ui/charts.css', 'data-charts': ''}));
}

// datetime-local values are local times without a zone.
function localInput(seconds) {
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromInput(value) {
  const t = new Date(value).getTime();
  return Number.isFinite(t) ? t / 1000 : null;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function number(v) {
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
}

function duration(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

// A number as people read it: no float noise, no exponent for the usual
// sizes of sensor values.
export function formatNumber(v) {
  return number(v);
}

// A chart of one key's stored points (the device page's "Stored data"),
// drawn with the same uPlot as the charts over time: an image whose name
// says what it shows (the page offers the points as a table too).
// points: [{timestamp, value}] in time order, values finite numbers.
// Returns {element, destroy()}.
export function pointsChart(key, points, width, height = 220) {
  loadStyles();
  const values = points.map((p) => p.value);
  const first = points[0].timestamp;
  const lastPoint = points[points.length - 1];
  const n = points.length;
  const description = `${key}: ${n} point${n === 1 ? '' : 's'} from ${when(first)} to ${when(lastPoint.timestamp)}; `
    + `lowest ${number(Math.min(...values))}, highest ${number(Math.max(...values))}, last ${number(lastPoint.value)}.`;
  const element = h('div', {class: 'chart-plot points-plot', role: 'img', 'aria-label': `Plot of ${key}. ${description}`});
  // One point alone: a minute either side, so that it is seen.
  const scale = first === lastPoint.timestamp ? {min: first - 60, max: first + 60} : {};
  const plot = new uPlot({
    width: Math.max(200, width),
    height,
    series: [{}, {label: key, stroke: COLORS[0], width: 2,
      points: {show: n <= 200, size: 6}, value: (u, v) => (v === null ? '–' : number(v))}],
    legend: {show: false},
    cursor: {drag: {x: false, y: false}},
    scales: {x: {time: true, ...scale}},
    axes: [{}, {size: width < 480 ? 44 : 60}],
  }, [points.map((p) => p.timestamp), values], element);
  return {element, destroy: () => plot.destroy()};
}

// getDevice(): the device the page shows.
export function chartsPart(ctx, deviceId, getDevice) {
  loadStyles();
  const state = {range: 'hour', from: null, to: null, zooms: [], compare: [], hidden: new Set(),
    bands: false};
  let names = {[deviceId]: getDevice().name || deviceId};
  let others = [];
  let chart = null;
  let last = null;
  let loading = false;

  const message = messageArea();
  const group = uid('range');
  const radios = RANGES.map(([value, label]) => {
    const input = h('input', {type: 'radio', name: group, value, checked: value === state.range,
      onchange: () => { if (input.checked) chooseRange(value); }});
    return h('label', {class: 'choice'}, input, ` ${label}`);
  });
  const fromField = field('From', h('input', {type: 'datetime-local', required: true}));
  const toField = field('To', h('input', {type: 'datetime-local', required: true}));
  const custom = h('form', {class: 'chart-custom', hidden: true, onsubmit: (e) => {
    e.preventDefault();
    const from = fromInput(fromField.input.value);
    const to = fromInput(toField.input.value);
    if (from === null || to === null || !(from < to)) {
      showMessage(message, 'Choose a start before the end.', 'error');
      return;
    }
    state.zooms = [];
    state.from = from;
    state.to = to;
    load();
  }}, fromField.field, toField.field,
  h('div', {class: 'actions left'}, h('button', {type: 'submit', class: 'secondary'}, 'Show')));

  const compareSelect = h('select', {});
  const compareField = field('Compare with', compareSelect,
    'Another device the key may see: its data on the same chart.');
  const compareButton = h('button', {type: 'button', class: 'secondary', onclick: addCompared}, 'Add to chart');
  const comparedList = h('ul', {class: 'compared', 'aria-label': 'Devices on the chart'});
  const keysBox = h('fieldset', {class: 'chart-keys', hidden: true}, h('legend', {}, 'Keys'));
  const bandsBox = h('input', {type: 'checkbox', onchange: () => { state.bands = bandsBox.checked; draw(); }});
  const zoomOut = h('button', {type: 'button', class: 'secondary', disabled: true, onclick: () => {
    const previous = state.zooms.pop();
    if (!previous) return;
    Object.assign(state, previous);
    load();
  }}, 'Zoom out');
  const refresh = h('button', {type: 'button', class: 'secondary', onclick: () => load()}, 'Refresh');
  const plotBox = h('div', {class: 'chart-plot', role: 'img', 'aria-label': 'Chart: loading'});
  const legend = h('ul', {class: 'chart-legend'});
  const caption = h('figcaption', {class: 'hint'});
  const empty = h('p', {class: 'muted', hidden: true});

  const element = h('div', {class: 'charts'},
    h('fieldset', {class: 'chart-ranges'}, h('legend', {}, 'Range'), radios),
    custom,
    h('div', {class: 'chart-tools'},
      h('label', {class: 'choice'}, bandsBox, ' Show min and max'),
      zoomOut, refresh),
    message,
    h('figure', {class: 'chart'}, plotBox, legend, caption),
    empty,
    keysBox,
    h('div', {class: 'chart-compare'}, compareField.field,
      h('div', {class: 'actions left'}, compareButton)),
    comparedList);

  function chooseRange(value) {
    state.range = value;
    state.zooms = [];
    custom.hidden = value !== 'custom';
    if (value === 'custom') {
      const now = Date.now() / 1000;
      if (!fromField.input.value) fromField.input.value = localInput(last ? last.from : now - 86400);
      if (!toField.input.value) toField.input.value = localInput(last ? last.to : now);
      fromField.input.focus();
      return;
    }
    state.from = null;
    state.to = null;
    load();
  }

  function span() {
    if (state.from !== null) return [state.from, state.to];
    const seconds = RANGES.find(([v]) => v === state.range)[2] || 3600;
    const now = Date.now() / 1000;
    return [now - seconds, now];
  }

  function width() {
    return Math.max(240, Math.floor(plotBox.getBoundingClientRect().width || element.getBoundingClientRect().width || 600));
  }

  async function load({quiet = false} = {}) {
    if (loading) return;
    loading = true;
    const [from, to] = span();
    const bucket = bucketFor(to - from, width());
    const devices = [deviceId, ...state.compare];
    if (!quiet) plotBox.setAttribute('aria-busy', 'true');
    try {
      const reply = await api('GET', `/data?from=${from.toFixed(3)}&to=${to.toFixed(3)}&bucket=${bucket}&device=${devices.map(encode).join(',')}`);
      if (!ctx.alive) return;
      last = reply;
      clearMessage(message);
      draw();
    } catch (error) {
      if (!ctx.alive) return;
      showMessage(message, describe(error), 'error');
    } finally {
      loading = false;
      plotBox.removeAttribute('aria-busy');
      zoomOut.disabled = state.zooms.length === 0;
    }
  }

  // Units from the device's tags ({"units": {"temp": "°C"}}; restricted
  // keys see no tags, so no units).
  function unitOf(s) {
    const d = s.device_id === deviceId ? getDevice() : others.find((o) => o.id === s.device_id);
    const units = d && d.shadow && d.shadow.tags && d.shadow.tags.units;
    const unit = units && typeof units === 'object' ? units[s.key] : null;
    return typeof unit === 'string' && unit.length <= 16 ? unit : null;
  }

  function label(s) {
    const unit = unitOf(s);
    const key = unit ? `${s.key} (${unit})` : s.key;
    return state.compare.length ? `${names[s.device_id] || s.device_id} · ${key}` : key;
  }

  function renderKeys(series) {
    const keys = [...new Set(series.map((s) => s.key))].sort();
    keysBox.hidden = keys.length < 2;
    replace(keysBox, h('legend', {}, 'Keys'), keys.map((key) => {
      const box = h('input', {type: 'checkbox', checked: !state.hidden.has(key), onchange: () => {
        if (box.checked) state.hidden.delete(key); else state.hidden.add(key);
        draw();
      }});
      return h('label', {class: 'choice'}, box, ` ${key}`);
    }));
  }

  function draw() {
    if (!last) return;
    const all = last.series;
    renderKeys(all);
    const numeric = all.filter((s) => s.avg.some((v) => v !== null));
    const shown = numeric.filter((s) => !state.hidden.has(s.key));
    const counted = all.filter((s) => !numeric.includes(s));
    const bucket = last.bucket;
    const range = `${when(last.from)} to ${when(last.to)}`;
    empty.hidden = shown.length > 0;
    // No blank 200 px box above the words that say why.
    plotBox.hidden = !shown.length;
    if (!all.length) empty.textContent = `No stored data from ${range}.`;
    else if (!numeric.length) empty.textContent = 'None of the stored values in this range is a number: nothing to plot.';
    else empty.textContent = 'Every key is hidden: choose one under Keys.';
    if (chart) {
      chart.destroy();
      chart = null;
    }
    replace(legend);
    if (!shown.length) {
      plotBox.setAttribute('aria-label', `Chart: ${empty.textContent}`);
      caption.textContent = '';
      return;
    }
    // One x axis: every bucket any series has; gaps where a series has none.
    const times = [...new Set(shown.flatMap((s) => s.t))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const data = [times];
    const series = [{}];
    const summary = [];
    shown.forEach((s, n) => {
      const color = COLORS[n % COLORS.length];
      const column = (values) => {
        const out = new Array(times.length).fill(null);
        s.t.forEach((t, i) => { out[index.get(t)] = values[i]; });
        return out;
      };
      data.push(column(s.avg));
      series.push({label: label(s), stroke: color, width: 2, spanGaps: false,
        value: (u, v) => (v === null ? '–' : number(v))});
      if (state.bands) {
        data.push(column(s.min), column(s.max));
        series.push({label: `${label(s)} min`, stroke: color, width: 1, dash: [4, 4]},
          {label: `${label(s)} max`, stroke: color, width: 1, dash: [4, 4]});
      }
      const lows = s.min.filter((v) => v !== null);
      const highs = s.max.filter((v) => v !== null);
      const points = s.count.reduce((a, b) => a + b, 0);
      // The average of the range: the buckets' averages weighed by their counts.
      let weight = 0;
      let sum = 0;
      s.avg.forEach((v, i) => { if (v !== null) { sum += v * s.count[i]; weight += s.count[i]; } });
      const text = `${label(s)}: ${points} point${points === 1 ? '' : 's'}, lowest ${number(Math.min(...lows))}, highest ${number(Math.max(...highs))}, average ${number(sum / weight)}`;
      summary.push(text);
      const swatch = h('span', {class: 'swatch', 'aria-hidden': 'true'});
      swatch.style.backgroundColor = color;
      add(legend, h('li', {}, swatch, text));
    });
    const note = counted.length ? ` Not numbers, counted only: ${counted.map(label).join(', ')}.` : '';
    caption.textContent = `${range}, averages of ${duration(bucket)} buckets${state.bands ? ' with their min and max (dashed)' : ''}. Drag across the chart to zoom in.${note}`;
    plotBox.setAttribute('aria-label', `Chart, ${range}, ${duration(bucket)} buckets. ${summary.join('. ')}.`);
    const narrow = width() < 480;
    chart = new uPlot({
      width: width(),
      height: narrow ? 200 : 260,
      series,
      legend: {show: false},
      cursor: {drag: {x: true, y: false, setScale: false}},
      scales: {x: {time: true, min: last.from, max: last.to}},
      axes: [{}, {size: narrow ? 44 : 60, label: sharedUnit(shown), labelSize: sharedUnit(shown) ? 20 : 0}],
      hooks: {setSelect: [(u) => {
        if (u.select.width < 4) return;
        const from = u.posToVal(u.select.left, 'x');
        const to = u.posToVal(u.select.left + u.select.width, 'x');
        u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
        zoomTo(from, to);
      }]},
    }, data, plotBox);
  }

  // The unit of the y axis, when every series shown has the same one.
  function sharedUnit(shown) {
    const units = [...new Set(shown.map(unitOf))];
    return units.length === 1 && units[0] ? units[0] : undefined;
  }

  function zoomTo(from, to) {
    if (!(to - from >= 2)) return;
    state.zooms.push({range: state.range, from: state.from, to: state.to});
    state.from = from;
    state.to = to;
    load();
  }

  function renderCompared() {
    replace(comparedList, state.compare.map((id) => h('li', {},
      h('span', {}, names[id] || id), ' ',
      h('button', {type: 'button', class: 'secondary small', 'aria-label': `Remove ${names[id] || id} from the chart`,
        onclick: () => {
          state.compare = state.compare.filter((x) => x !== id);
          renderCompared();
          load();
        }}, 'Remove'))));
    replace(compareSelect, others.filter((d) => !state.compare.includes(d.id))
      .map((d) => h('option', {value: d.id}, d.name || d.id)));
    const full = state.compare.length >= MAX_DEVICES - 1;
    compareButton.disabled = full || compareSelect.options.length === 0;
    compareField.field.hidden = others.length === 0;
    compareButton.hidden = others.length === 0;
  }

  function addCompared() {
    const id = compareSelect.value;
    if (!id || state.compare.includes(id)) return;
    state.compare.push(id);
    renderCompared();
    load();
  }

  async function loadDevices() {
    try {
      const list = await api('GET', '/devices');
      if (!ctx.alive) return;
      names = Object.fromEntries(list.map((d) => [d.id, d.name || d.id]));
      others = list.filter((d) => d.id !== deviceId)
        .sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
      renderCompared();
    } catch (error) {
      others = [];
      renderCompared();
    }
  }

  let resizeTimer = null;
  function resized() {
    if (!ctx.alive) {
      window.removeEventListener('resize', resized);
      return;
    }
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => { if (ctx.alive && chart) draw(); }, 150);
  }
  window.addEventListener('resize', resized);
  const follow = window.setInterval(() => {
    if (!ctx.alive) {
      window.clearInterval(follow);
      return;
    }
    if (state.from === null && !document.hidden) load({quiet: true});
  }, FOLLOW_EVERY);

  renderCompared();
  // Once on the page (its width known).
  window.setTimeout(() => {
    if (!ctx.alive) return;
    load();
    loadDevices();
  }, 0);
  return {element};
}
