// The REST API, with the key the user signed in with. The key goes in the
// Authorization header, never in a URL (the notification WebSocket, which
// browsers cannot give headers, opens with a single-use ticket: notify.js).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let currentKey = null;
let unauthorized = null;

export function setKey(key) {
  currentKey = key;
}

// Called with the error when the key stops working (revoked, expired).
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function api(method, path, body, options = {}) {
  const key = options.key || currentKey;
  const headers = {Accept: 'application/json'};
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = {method, headers, cache: 'no-store', credentials: 'omit'};
  if (!key && sessionMode) sessionCredentials(init, headers);
  // (a reply whose cookies the browser is to keep: POST /session)
  if (options.keepCookies) init.credentials = 'same-origin';
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api/v2${path}`, init);
  } catch (e) {
    throw new ApiError(0, 0, `dashd cannot be reached (${e.message}). Check the network and try again.`);
  }
  const text = await response.text();
  if (!response.ok) {
    const error = apiError(response.status, text, response.statusText, response.headers.get('Retry-After'));
    if (response.status === 401 && !options.key && !options.quiet && unauthorized) unauthorized(error);
    throw error;
  }
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (e) {
    parsed = null;
  }
  // withStatus: {status, body, headers}, for answers whose status says
  // something (202: queued) or whose headers do (X-Next-Cursor).
  return options.withStatus ? {status: response.status, body: parsed, headers: response.headers} : parsed;
}

function apiError(status, text, statusText, retryAfter) {
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (e) {
    parsed = null;
  }
  const err = parsed && parsed.error ? parsed.error : {code: status, message: text || statusText};
  const error = new ApiError(status, err.code, err.message);
  if (retryAfter) error.retryAfter = Number(retryAfter);
  return error;
}

// POST a file as multipart/form-data (the part named "file", like curl -F
// file=@FILE). XMLHttpRequest rather than fetch: only it reports how much
// of the body has gone out (onProgress(sent, total)). Resolves with the
// parsed reply, or fails with ApiError like api().
export function upload(path, file, {onProgress} = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/v2${path}`);
    xhr.setRequestHeader('Accept', 'application/json');
    if (currentKey) xhr.setRequestHeader('Authorization', `Bearer ${currentKey}`);
    else if (sessionMode) xhr.setRequestHeader('X-Dashd-CSRF', csrfToken());
    if (onProgress) {
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable) onProgress(e.loaded, e.total);
      });
    }
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
        } catch (e) {
          reject(new ApiError(xhr.status, 0, `dashd sent a reply that is not JSON: ${e.message}`));
        }
        return;
      }
      const error = apiError(xhr.status, xhr.responseText, xhr.statusText, xhr.getResponseHeader('Retry-After'));
      if (xhr.status === 401 && unauthorized) unauthorized(error);
      reject(error);
    });
    xhr.addEventListener('error', () => {
      reject(new ApiError(0, 0, 'The upload was cut off: dashd cannot be reached or closed the connection. Check the network and try again.'));
    });
    xhr.addEventListener('abort', () => {
      reject(new ApiError(0, 0, 'The upload was cancelled.'));
    });
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}

// What an error means, in a sentence for the person who caused it.
export function describe(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message || error}`;
  const m = error.message;
  switch (error.status) {
    case 0: return m;
    case 400: return `Rejected (400): ${m}`;
    case 401: return `Your API key is not accepted (401): ${m}`;
    case 403: return `Not allowed with this key (403): ${m}`;
    case 404: return `Not found (404): ${m}`;
    case 409: return `Conflict (409): ${m}`;
    case 413: return `Too large (413): ${m}`;
    case 415: return `Unsupported (415): ${m}`;
    case 429: return `Too many requests (429): ${m}${error.retryAfter ? ` Try again in ${error.retryAfter} s.` : ''}`;
    case 502: return `The device answered with error ${error.code}: ${m}`;
    case 503: return `Unavailable (503): ${m}`;
    case 504: return `No answer in time (504): ${m}`;
    default: return `Error ${error.status}: ${m}`;
  }
}

export const encode = encodeURIComponent;

// "Keep me signed in on this browser": instead of a key, the session
// cookie dashd set (HttpOnly: no script reads it) and its CSRF token, which
// every request sends back in a header (dashd.app.sessions).
let sessionMode = false;

export function setSession(on) {
  sessionMode = on;
}

export function csrfToken() {
  const found = document.cookie.split(';').map((c) => c.trim()).find((c) => c.startsWith('dashd_csrf='));
  return found ? decodeURIComponent(found.slice('dashd_csrf='.length)) : '';
}

function sessionCredentials(init, headers) {
  init.credentials = 'same-origin';
  headers['X-Dashd-CSRF'] = csrfToken();
}
