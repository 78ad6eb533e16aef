// The dashboard's entry point: sign-in state, the notification stream and
// a router over location.hash (#/devices, #/devices/ID, #/keys, #/audit,
// #/accounts), so that the server only ever serves "/" and the browser's
// history works.

import {api, csrfToken, describe, onUnauthorized, setKey, setSession} from './api.js';
import {announce, h, keyboardScroll, replace} from './dom.js';
import {refreshTimes} from './format.js';
import {Notifier} from './notify.js';
import {permissions} from './perms.js';
import * as signin from './signin.js';
import * as devices from './devices.js';
import * as device from './device.js';
import * as keys from './keys.js';
import * as audit from './audit.js';
import * as accounts from './accounts.js';
import * as logs from './logs.js';
import {forgetState, startOffline} from './offline.js';
import * as jobs from './jobs.js';
import * as job from './job.js';
import * as library from './library.js';
import * as alarms from './alarms.js';
import * as webhooks from './webhooks.js';
import {startAlarmBar, stopAlarmBar} from './alarmbar.js';
import {decorate} from './alarmdecor.js';

const STORAGE = 'dashd.apiKey';

const app = {
  key: null,
  me: null,
  perms: null,
  notifier: null,
  view: null,
  notice: null, // a message for the sign-in page (why the user was signed out)
};

const LIVE_TEXT = {
  connecting: 'Connecting to live updates…',
  live: 'Live',
  reconnecting: 'Live updates lost: reconnecting…',
  closed: '',
};

function setLiveState(state) {
  const el = document.getElementById('live-state');
  el.textContent = LIVE_TEXT[state] || '';
  el.className = `live-state ${state}`;
}

async function signIn(key, {keep = false} = {}) {
  // Throws ApiError (401 for a wrong key) for the sign-in page to show.
  const me = await api('GET', '/whoami', undefined, {key});
  if (keep) {
    // A session cookie instead of the key (dashd.app.sessions): every tab.
    await api('POST', '/session', {}, {key, keepCookies: true});
    return signedIn(me, null);
  }
  return signedIn(me, key);
}

function signedIn(me, key) {
  setKey(key);
  setSession(key === null);
  app.key = key;
  app.me = me;
  app.notice = null;
  app.perms = permissions(me);
  if (key !== null) sessionStorage.setItem(STORAGE, key);
  startStream();
  showSession();
  return me;
}

// A session this browser kept (another tab signed in with "keep me signed in").
async function resumeSession() {
  if (!csrfToken()) return;
  setSession(true);
  try {
    signedIn(await api('GET', '/whoami', undefined, {quiet: true}), null);
  } catch (error) {
    setSession(false);
    if (error.status === 401 || error.status === 403) app.notice = describe(error);
  }
}

function startStream() {
  if (app.notifier) app.notifier.stop();
  app.notifier = new Notifier(app.key, {
    onState: setLiveState,
    onRevoked: (reason) => signOut(`You were signed out: ${reason}.`),
    // A stream that keeps failing may mean the key expired: ask dashd.
    onLost: () => { api('GET', '/whoami').catch(() => {}); },
  }).start();
  startAlarmBar(app.notifier);
}

function signOut(notice) {
  if (app.view) app.view.destroy();
  app.view = null;
  if (app.notifier) app.notifier.stop();
  app.notifier = null;
  stopAlarmBar();
  sessionStorage.removeItem(STORAGE);
  forgetState();
  if (!app.key && app.me) api('DELETE', '/session', undefined, {quiet: true}).catch(() => {});
  setSession(false);
  setKey(null);
  app.key = null;
  app.me = null;
  app.perms = null;
  app.notice = notice || null;
  showSession();
  setLiveState('closed');
  if (window.location.hash !== '#/signin') window.location.hash = '#/signin';
  else route();
}

function showSession() {
  const signedIn = Boolean(app.me);
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('session').hidden = !signedIn;
  document.getElementById('nav-keys-item').hidden = !(signedIn && app.perms.canManageKeys);
  document.getElementById('nav-audit-item').hidden = !(signedIn && app.perms.canReadAudit);
  document.getElementById('nav-accounts-item').hidden = !(signedIn && app.perms.canManageAccounts);
  document.getElementById('nav-logs-item').hidden = !(signedIn && app.perms.seesLog);
  document.getElementById('nav-firmware-item').hidden = !(signedIn && !app.perms.restricted);
  document.getElementById('nav-webhooks-item').hidden = !(signedIn && app.perms.admin);
  const who = document.getElementById('who');
  if (signedIn) {
    const name = app.me.name ? `${app.me.name} ` : '';
    const account = app.me.account_name ? `${app.me.account_name}: ` : '';
    replace(who, `${account}key ${name}(${app.me.kind})`);
    who.title = `key ${app.me.id}, account ${app.me.account_id}`;
  } else {
    who.replaceChildren();
  }
}

// A view's context: shared state plus listeners and timers that end with it.
function viewContext() {
  const cleanups = [];
  const ctx = {
    me: app.me,
    perms: app.perms,
    alive: true,
    navigate: (hash) => { window.location.hash = hash; },
    signOut,
    listen(fn) {
      if (app.notifier) cleanups.push(app.notifier.listen(fn));
    },
    every(ms, fn) {
      const timer = window.setInterval(fn, ms);
      cleanups.push(() => window.clearInterval(timer));
    },
    onDestroy(fn) {
      cleanups.push(fn);
    },
    destroy() {
      ctx.alive = false;
      for (const fn of cleanups.splice(0)) fn();
    },
  };
  return ctx;
}

function parseRoute(hash) {
  const path = hash.replace(/^#/, '');
  let m;
  if (path === '/signin') return {view: signin, params: {}};
  if (path === '/keys') return {view: keys, params: {}};
  if (path === '/audit') return {view: audit, params: {}};
  if (path === '/accounts') return {view: accounts, params: {}};
  if (path === '/alarms') return {view: alarms, params: {}};
  if (path === '/webhooks') return {view: webhooks, params: {}};
  if ((m = /^\/devices\/([^/]+)$/.exec(path))) return {view: device, params: {id: decodeURIComponent(m[1])}};
  // A part of the device page (deep links: #/devices/ID/rpc).
  if ((m = /^\/devices\/([^/]+)\/([a-z-]+)$/.exec(path))) return {view: device, params: {id: decodeURIComponent(m[1]), section: m[2]}};
  if (path === '/devices') return {view: devices, params: {}};
  if (path === '/logs') return {view: logs, params: {}};
  if ((m = /^\/jobs(?:\?firmware=([^&]+))?$/.exec(path))) return {view: jobs, params: {firmware: m[1] && decodeURIComponent(m[1])}};
  if ((m = /^\/jobs\/([^/?]+)$/.exec(path))) return {view: job, params: {id: decodeURIComponent(m[1])}};
  if (path === '/firmware') return {view: library, params: {}};
  return null;
}

function markCurrentNav() {
  for (const link of document.querySelectorAll('#nav a')) {
    const here = window.location.hash.startsWith(link.getAttribute('href'));
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function route() {
  const main = document.getElementById('main');
  let target = parseRoute(window.location.hash);
  if (!app.me) {
    if (!target || target.view !== signin) {
      // Come back here after signing in.
      app.after = target ? window.location.hash : '#/devices';
      window.location.replace('#/signin');
      return;
    }
  } else if (!target || target.view === signin) {
    window.location.replace(app.after && app.after !== '#/signin' ? app.after : '#/devices');
    app.after = null;
    return;
  }
  // The page shown may take the new address itself (another part of it).
  if (app.view && app.view.reroute && app.view.reroute(target.view, target.params)) {
    markCurrentNav();
    return;
  }
  if (app.view) app.view.destroy();
  const ctx = viewContext();
  app.view = ctx;
  markCurrentNav();
  main.replaceChildren();
  // The notice stays until the next sign-in: the sign-in page may be
  // drawn twice (the stream's revocation and the API's reply both sign out).
  const notice = target.view === signin ? app.notice : null;
  const next = app.after && app.after !== '#/signin' ? app.after : '#/devices';
  if (target.view !== signin) app.after = null;
  const title = target.view.mount(main, ctx, target.params, {notice, signIn, next});
  document.title = `${title} · dashd`;
  decorate(main, ctx, {name: target.view === device ? 'device' : target.view === devices ? 'devices' : '', params: target.params});
  // Move focus to the new page's heading, so keyboard and screen-reader
  // users start there.
  const heading = main.querySelector('h1');
  if (heading) heading.setAttribute('tabindex', '-1');
  const focus = ctx.focusTarget || heading;
  if (focus) focus.focus();
}

async function boot() {
  startOffline();
  onUnauthorized((error) => signOut(`You were signed out: ${error.message}.`));
  document.getElementById('sign-out').addEventListener('click', () => {
    signOut('You signed out. The key is no longer kept in this tab.');
    announce('Signed out');
  });
  document.getElementById('skip-link').addEventListener('click', (e) => {
    e.preventDefault();
    const main = document.getElementById('main');
    (main.querySelector('h1') || main).focus();
  });
  window.setInterval(() => refreshTimes(document.body), 30000);
  keyboardScroll(document.getElementById('main'));
  const stored = sessionStorage.getItem(STORAGE);
  if (stored) {
    try {
      await signIn(stored);
    } catch (error) {
      if (error.status === 401) sessionStorage.removeItem(STORAGE);
      app.notice = describe(error);
    }
  } else {
    await resumeSession();
  }
  window.addEventListener('hashchange', route);
  route();
}

boot().catch((error) => {
  replace(document.getElementById('main'), h('p', {class: 'message error', role: 'alert'}, `The dashboard failed to start: ${error.message}`));
});
