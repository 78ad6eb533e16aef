// The live notification stream (/api/v2/notify). Browsers cannot send an
// Authorization header on a WebSocket, and a key in a URL ends up in console
// errors and proxy logs: each connection asks POST /api/v2/notify/ticket
// (the key in the header) for a single-use ticket and opens the stream with
// that. Reconnects with a growing delay; a stream closed because the key was
// revoked (4001), or a ticket refused for it (401), signs the user out.

import {api} from './api.js';

const REVOKED = 4001;

export class Notifier {
  constructor(key, {onState, onRevoked, onLost}) {
    this.key = key;
    this.onState = onState;
    this.onRevoked = onRevoked;
    this.onLost = onLost;
    this.listeners = new Set();
    this.socket = null;
    this.stopped = false;
    this.delay = 1000;
    this.timer = null;
    this.wasOpen = false;
    this.state = 'connecting';
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  setState(state) {
    this.state = state;
    if (this.onState) this.onState(state);
  }

  async connect() {
    this.timer = null;
    this.setState('connecting');
    let ticket;
    try {
      ticket = await api('POST', '/notify/ticket', {}, {key: this.key});
    } catch (error) {
      if (this.stopped) return;
      if (error.status === 401) {
        this.stopped = true;
        this.setState('closed');
        if (this.onRevoked) this.onRevoked(error.message);
        return;
      }
      this.retry();
      return;
    }
    if (this.stopped) return;
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${window.location.host}/api/v2/notify?ticket=${encodeURIComponent(ticket.ticket)}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener('open', () => {
      if (this.socket !== socket) return;
      this.delay = 1000;
      this.setState('live');
      // Events may have been missed while it was down: views reload.
      if (this.wasOpen) this.emit({name: 'stream.reconnected', id: null, data: null});
      this.wasOpen = true;
    });
    socket.addEventListener('message', (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (event && typeof event.name === 'string') this.emit(event);
    });
    socket.addEventListener('close', (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (close.code === REVOKED) {
        this.stopped = true;
        this.setState('closed');
        if (this.onRevoked) this.onRevoked(close.reason || 'this API key was revoked');
        return;
      }
      this.retry();
    });
  }

  retry() {
    this.setState('reconnecting');
    if (this.onLost) this.onLost();
    this.timer = window.setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 30000);
  }

  emit(event) {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (e) {
        // One broken view must not stop the others.
        window.setTimeout(() => { throw e; });
      }
    }
  }

  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  stop() {
    this.stopped = true;
    if (this.timer) window.clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState === WebSocket.CONNECTING) {
      // Closing a socket that is still connecting makes the browser log an
      // error; let it open first.
      socket.addEventListener('open', () => socket.close(1000, 'signed out'));
    } else if (socket) {
      socket.close(1000, 'signed out');
    }
    this.listeners.clear();
  }
}
