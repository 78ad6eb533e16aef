// Times as people read them: "3 min ago", with the exact time on hover and
// in the datetime attribute for assistive technology.

import {h} from './dom.js';

const UNITS = [
  [60, 'second'], [60, 'minute'], [24, 'hour'], [30, 'day'], [12, 'month'], [Infinity, 'year'],
];

export function relative(seconds, now = Date.now() / 1000) {
  let diff = Math.round(now - seconds);
  if (Math.abs(diff) < 5) return 'just now';
  const future = diff < 0;
  diff = Math.abs(diff);
  for (const [size, unit] of UNITS) {
    if (diff < size) {
      const label = `${diff} ${unit}${diff === 1 ? '' : 's'}`;
      return future ? `in ${label}` : `${label} ago`;
    }
    diff = Math.floor(diff / size);
  }
  return '';
}

export function absolute(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

// A <time> element for a Unix time (or a dash when there is none).
export function timeEl(seconds, empty = 'never') {
  if (seconds === null || seconds === undefined) return h('span', {class: 'muted'}, empty);
  const iso = new Date(seconds * 1000).toISOString();
  return h('time', {datetime: iso, title: absolute(seconds), dataset: {unix: String(seconds)}},
    relative(seconds));
}

// Refresh every relative time below root (called on a timer).
export function refreshTimes(root) {
  for (const el of root.querySelectorAll('time[data-unix]')) {
    el.textContent = relative(Number(el.dataset.unix));
  }
}
