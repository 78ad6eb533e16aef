// The installable dashboard (a web app manifest, /ui/manifest.webmanifest)
// and what it shows while dashd cannot be reached: the service worker
// (/ui/sw.js) answers with the state it last saw, and this module says so
// in a banner under the header. The banner also says when the live
// updates are lost (dashd stopped, the network went): the states on the
// page are then as they were, and may be stale.

import {h, replace} from './dom.js';

const STATE_CACHE = 'dashd-state-v1';

let banner = null;
let offlineSince = null;
let servedSaved = null;

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

function render() {
  if (!banner) return;
  let text = null;
  if (servedSaved !== null) {
    text = `Offline: dashd cannot be reached. This is the state last seen at ${time(servedSaved)}; it may be stale.`;
  } else if (offlineSince !== null) {
    text = `dashd cannot be reached since ${time(offlineSince)}: the states shown are as they were then and may be stale.`;
  }
  replace(banner, text);
  banner.hidden = text === null;
}

// The live state element (#live-state) says when the stream is lost.
function watchLiveState() {
  const live = document.getElementById('live-state');
  if (!live) return;
  new MutationObserver(() => {
    if (live.classList.contains('reconnecting')) {
      if (offlineSince === null) offlineSince = Date.now();
    } else if (live.classList.contains('live') || live.classList.contains('closed')) {
      offlineSince = null;
      servedSaved = null;
    }
    render();
  }).observe(live, {attributes: true, attributeFilter: ['class']});
}

export function startOffline() {
  banner = h('div', {class: 'offline-banner', role: 'status', hidden: true});
  const header = document.querySelector('header.topbar');
  if (header) header.after(banner);
  watchLiveState();
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.addEventListener('message', (event) => {
    const data = event.data || {};
    if (data.type !== 'dashd-network') return;
    if (data.state === 'offline') {
      servedSaved = data.saved || null;
      if (offlineSince === null) offlineSince = Date.now();
    } else {
      servedSaved = null;
      offlineSince = null;
    }
    render();
  });
  navigator.serviceWorker.register('/ui/sw.js', {scope: '/'}).catch(() => {});
}

// Signing out: the state saved for offline use goes too.
export function forgetState() {
  if (window.caches) window.caches.delete(STATE_CACHE).catch(() => {});
}
