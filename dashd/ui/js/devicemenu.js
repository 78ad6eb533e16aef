// The device page's section menu: links to its parts, each with its own
// address (#/devices/ID/rpc), that show that part alone; "All"
// (#/devices/ID/all) shows the whole page. The device's own address opens
// on its first part, the overview. The sections stay on the page while hidden (the log and the
// live updates go on), so choosing one is instant and loses nothing.

import {encode} from './api.js';
import {h, replace} from './dom.js';

// [address, menu label, the titles of its sections]
export const ALL = 'all';
export const PARTS = [
  ['overview', 'Overview', ['Info', 'Shadow']],
  ['charts', 'Charts', ['Charts', 'Stored data']],
  ['rpc', 'RPC', ['RPC console', 'Queued calls']],
  ['firmware', 'Firmware', ['Firmware update']],
  ['log', 'Log', ['Device log']],
  ['settings', 'Sharing and token', ['Sharing', 'Token and deletion']],
];

function titleOf(section) {
  const heading = section.querySelector(':scope > h2');
  return heading ? heading.textContent : '';
}

// body: the element holding the page's sections; note: where to say that
// an address names no part of the page. Returns {element, show(part)}.
export function deviceMenu(deviceId, body, note) {
  const sections = [...body.querySelectorAll(':scope > section')];
  const parts = PARTS.filter(([, , titles]) => sections.some((s) => titles.includes(titleOf(s))));
  const base = `#/devices/${encode(deviceId)}`;
  const links = new Map();
  const list = h('ul', {},
    parts.map(([part, label]) => h('li', {}, link(part, label))),
    h('li', {}, link(ALL, 'All')));
  const element = h('nav', {class: 'device-menu', 'aria-label': 'Parts of this device page'}, list);

  function link(part, label) {
    const a = h('a', {href: `${base}/${part}`}, label);
    links.set(part, a);
    return a;
  }

  // part: an address's last step; '' (the device's own address): the first.
  function show(part) {
    const wanted = part || (parts.length ? parts[0][0] : ALL);
    const known = wanted === ALL || parts.some(([p]) => p === wanted);
    const chosen = known ? wanted : ALL;
    const titles = chosen === ALL ? null : parts.find(([p]) => p === chosen)[2];
    for (const section of sections) {
      section.hidden = titles !== null && !titles.includes(titleOf(section));
    }
    for (const [p, a] of links) {
      if (p === chosen) a.setAttribute('aria-current', 'location');
      else a.removeAttribute('aria-current');
    }
    if (note) {
      replace(note, known ? null : `This page has no part called "${part}": showing all of it.`);
      note.hidden = known;
    }
    return chosen;
  }

  return {element, show};
}
