// dashd's service worker (registered by js/offline.js, scope "/"): the
// dashboard opens, and shows the state it last saw, while dashd cannot be
// reached, and says so.
//
// - The page and its assets (/ and /ui/...): from the network first (so an
//   upgraded dashd is never served stale), the copy saved from the last
//   answer when the network fails.
// - The state (GET /api/v2/whoami, /api/v2/devices and /api/v2/devices/ID,
//   without a query): the same, each answer saved under the caller's
//   identity (a hash of its Authorization or CSRF header), so that another
//   key signed in on this browser never sees it. The dashboard deletes the
//   saved state when its user signs out.
// - Everything else goes to the network as if there were no worker.
//
// The pages are told (postMessage {type: 'dashd-network', state: 'offline'
// | 'online', saved}) when an answer came from the saved state, and when
// dashd answers again.

const SHELL = 'dashd-shell-v1';
const STATE = 'dashd-state-v1';
const STATE_PATHS = [/^\/api\/v2\/whoami$/, /^\/api\/v2\/devices$/, /^\/api\/v2\/devices\/[^/]+$/];

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== SHELL && name !== STATE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname === '/' || url.pathname.startsWith('/ui/')) {
    event.respondWith(shell(request));
  } else if (!url.search && STATE_PATHS.some((p) => p.test(url.pathname))) {
    event.respondWith(state(request));
  }
});

async function shell(request) {
  const cache = await caches.open(SHELL);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (error) {
    const saved = await cache.match(request);
    if (saved) return saved;
    throw error;
  }
}

async function who(request) {
  const id = request.headers.get('Authorization') || request.headers.get('X-Dashd-CSRF') || '';
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(id));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function state(request) {
  const cache = await caches.open(STATE);
  const key = `${request.url}?who=${await who(request)}`;
  let response;
  try {
    response = await fetch(request);
  } catch (error) {
    const saved = await cache.match(key);
    tell('offline', saved ? Number(saved.headers.get('X-Dashd-Saved')) : null);
    if (saved) return saved;
    throw error;
  }
  if (response.ok) {
    const headers = new Headers(response.headers);
    headers.set('X-Dashd-Saved', String(Date.now()));
    await cache.put(key, new Response(await response.clone().blob(), {status: 200, headers}));
    tell('online', null);
  }
  return response;
}

async function tell(state, saved) {
  for (const client of await self.clients.matchAll({type: 'window'})) {
    client.postMessage({type: 'dashd-network', state, saved});
  }
}
