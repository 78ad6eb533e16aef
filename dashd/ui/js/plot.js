// Line charts of one numeric time series in plain SVG, built element by
// element (no markup from strings, no library). Colours and fonts come from
// app.css classes (the CSP allows no inline style). Each chart is an image
// with a title and a description that says what it shows; the page offers
// the same points as a table.

const SVG = 'http://www.w3.org/2000/svg';

let nextId = 0;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// About `count` round tick values from lo to hi (steps of 1, 2 or 5 times
// a power of ten), and how many decimals they need.
export function ticks(lo, hi, count = 4) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((c) => c >= raw) || 10 * power;
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    values.push(Number(v.toFixed(decimals)));
  }
  return {values, decimals: Math.min(decimals, 10)};
}

// A number as people read it: no float noise, no exponent for the usual
// sizes of sensor values.
export function formatNumber(v, decimals) {
  if (decimals !== undefined) return v.toFixed(decimals);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(6)));
}

export function formatTime(seconds, span) {
  const d = new Date(seconds * 1000);
  if (span < 86400) return d.toLocaleTimeString();
  return d.toLocaleString(undefined, {month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'});
}

// What the chart shows, in a sentence (its description for screen readers
// and the caption under it).
export function describeSeries(key, points) {
  const values = points.map((p) => p.value);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const last = points[points.length - 1];
  const span = last.timestamp - points[0].timestamp;
  const n = points.length;
  return `${key}: ${n} point${n === 1 ? '' : 's'} from ${formatTime(points[0].timestamp, span)} to ${formatTime(last.timestamp, span)}; `
    + `lowest ${formatNumber(lo)}, highest ${formatNumber(hi)}, last ${formatNumber(last.value)}.`;
}

// points: [{timestamp, value}] in time order, values finite numbers.
export function lineChart(key, points, width = 600, height = 220) {
  const margin = {left: 64, right: 16, top: 12, bottom: 30};
  const w = Math.max(120, width);
  const plotW = w - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const values = points.map((p) => p.value);
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  let t0 = points[0].timestamp;
  let t1 = points[points.length - 1].timestamp;
  if (t0 === t1) {
    t0 -= 30;
    t1 += 30;
  }
  const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => margin.top + (1 - (v - lo) / (hi - lo)) * plotH;

  nextId += 1;
  const titleId = `plot-title-${nextId}`;
  const descId = `plot-desc-${nextId}`;
  const svg = s('svg', {
    class: 'plot', width: w, height, viewBox: `0 0 ${w} ${height}`,
    role: 'img', 'aria-labelledby': `${titleId} ${descId}`,
  }, s('title', {id: titleId}, `Plot of ${key}`), s('desc', {id: descId}, describeSeries(key, points)));

  // Horizontal grid lines with their values.
  const yTicks = ticks(lo, hi, 4);
  for (const v of yTicks.values) {
    const py = y(v);
    svg.append(
      s('line', {class: 'plot-grid', x1: margin.left, x2: w - margin.right, y1: py, y2: py}),
      s('text', {class: 'plot-label', x: margin.left - 6, y: py + 4, 'text-anchor': 'end'},
        formatNumber(v, yTicks.decimals)));
  }
  // The axes.
  svg.append(
    s('line', {class: 'plot-axis', x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH}),
    s('line', {class: 'plot-axis', x1: margin.left, x2: w - margin.right, y1: margin.top + plotH, y2: margin.top + plotH}));
  // Times: the first, the last and, where there is room, the middle.
  const span = t1 - t0;
  const labels = [[t0, 'start'], [t1, 'end']];
  if (plotW > 360) labels.push([(t0 + t1) / 2, 'middle']);
  for (const [t, anchor] of labels) {
    svg.append(s('text', {class: 'plot-label', x: x(t), y: height - 8, 'text-anchor': anchor},
      formatTime(t, span)));
  }
  // The series.
  const coords = points.map((p) => `${x(p.timestamp).toFixed(1)},${y(p.value).toFixed(1)}`);
  if (points.length > 1) svg.append(s('polyline', {class: 'plot-line', points: coords.join(' ')}));
  if (points.length <= 200) {
    for (const p of points) {
      svg.append(s('circle', {class: 'plot-point', cx: x(p.timestamp).toFixed(1), cy: y(p.value).toFixed(1), r: 3},
        s('title', {}, `${formatNumber(p.value)} at ${new Date(p.timestamp * 1000).toLocaleString()}`)));
    }
  }
  return svg;
}
