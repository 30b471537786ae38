'use strict';
// Shared helpers for the Sockudo conformance suite.
//
// Everything here drives the REAL pusher-js client (Node build, which bundles tweetnacl
// and therefore supports private-encrypted- channels) and the REAL `pusher` server SDK.
// The app credentials below must match the TOML that run.sh writes.

const crypto = require('node:crypto');
const net = require('node:net');
const { EventEmitter } = require('node:events');
const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const HOST = '127.0.0.1';
const PORT = Number(process.env.SOCKUDO_PORT || 6001);

if (process.env.PUSHER_DEBUG) PusherClient.logToConsole = true;

const APPS = {
  // client messages on, 10 client events/s, presence cap 100, 10 KB payloads
  main: { id: '1001', key: 'conf-key', secret: 'conf-secret' },
  // enable_client_messages = false
  noClientEvents: { id: '1002', key: 'conf-noclient-key', secret: 'conf-noclient-secret' },
  // enabled = false
  disabled: { id: '1003', key: 'conf-disabled-key', secret: 'conf-disabled-secret' },
  // max_connections = 1
  single: { id: '1004', key: 'conf-single-key', secret: 'conf-single-secret' },
  // max_presence_members = 2
  smallPresence: { id: '1005', key: 'conf-presence-key', secret: 'conf-presence-secret' },
};

// 32 random bytes, shared by every SDK instance of this process so that the shared_secret
// handed to pusher-js by authorizeChannel matches the key used by trigger.
const ENCRYPTION_MASTER_KEY_BASE64 = crypto.randomBytes(32).toString('base64');

const DEFAULT_WAIT_MS = 3000;
const TEST_TIMEOUT_MS = 10000;
const QUIET_MS = 500; // how long "nothing arrives" is observed

/** A `pusher` server SDK instance for an app (or arbitrary credentials). */
function server(app = APPS.main, overrides = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: HOST,
    port: String(PORT),
    useTLS: false,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
    ...overrides,
  });
}

const liveClients = new Set();

/**
 * Create a pusher-js client.
 *  opts.app         app credentials (default main)
 *  opts.presence    {user_id, user_info} or (channelName) => {...}: presence channel_data
 *  opts.badAuth     true → channel auth signature is corrupted
 *  opts.user        {id, ...}: user data for pusher.signin()
 *  opts.badSignin   true → signin signature is corrupted
 *  opts.key         override the key used in the WebSocket URL
 */
function client(opts = {}) {
  const app = opts.app || APPS.main;
  const sdk = server(app);
  const corrupt = (auth) => {
    // "{key}:{hex}" → flip the signature to a different, well-formed hex string
    const [k, sig] = auth.split(':');
    const flipped = sig.slice(0, -4) + (sig.slice(-4) === '0000' ? '1111' : '0000');
    return `${k}:${flipped}`;
  };
  const pusher = new PusherClient(opts.key || app.key, {
    wsHost: HOST,
    wsPort: PORT,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: {
      customHandler: (params, cb) => {
        try {
          let presence;
          if (params.channelName.startsWith('presence-')) {
            presence = typeof opts.presence === 'function' ? opts.presence(params.channelName) : opts.presence;
            if (!presence) throw new Error('test bug: presence channel without opts.presence');
          }
          const res = sdk.authorizeChannel(params.socketId, params.channelName, presence);
          if (opts.badAuth) res.auth = corrupt(res.auth);
          cb(null, res);
        } catch (e) {
          cb(e, null);
        }
      },
    },
    userAuthentication: {
      customHandler: (params, cb) => {
        try {
          if (!opts.user) throw new Error('test bug: signin without opts.user');
          const res = sdk.authenticateUser(params.socketId, opts.user);
          if (opts.badSignin) res.auth = corrupt(res.auth);
          cb(null, res);
        } catch (e) {
          cb(e, null);
        }
      },
    },
  });
  liveClients.add(pusher);
  return pusher;
}

function closeClient(pusher) {
  liveClients.delete(pusher);
  try {
    pusher.disconnect();
  } catch (_) {
    /* already gone */
  }
}

async function closeAll() {
  for (const p of [...liveClients]) closeClient(p);
  for (const r of [...liveRaw]) r.close();
  // give the server a moment to process the closes so the next test starts clean
  await sleep(150);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Wait for one `event` on a pusher-js Dispatcher (channel, connection, user). Resolves with [data, metadata]. */
function once(emitter, event, { timeout = DEFAULT_WAIT_MS, what, filter } = {}) {
  return new Promise((resolve, reject) => {
    const handler = (data, metadata) => {
      if (filter && !filter(data, metadata)) return;
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve([data, metadata]);
    };
    const timer = setTimeout(() => {
      emitter.unbind(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for ${what || `'${event}'`}`));
    }, timeout);
    emitter.bind(event, handler);
  });
}

/** Record every occurrence of `event` on `emitter` (array of {data, metadata}). */
function record(emitter, event) {
  const seen = [];
  emitter.bind(event, (data, metadata) => seen.push({ data, metadata }));
  return seen;
}

/** Record all events on a channel in order (bind_global). */
function recordAll(channel) {
  const seen = [];
  channel.bind_global((event, data) => seen.push({ event, data }));
  return seen;
}

/** Resolves once `fn()` returns truthy, polling. */
async function until(fn, { timeout = DEFAULT_WAIT_MS, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Wait until the client is connected. Rejects on a terminal state or a connection error. Returns socket_id. */
function connected(pusher, { timeout = DEFAULT_WAIT_MS } = {}) {
  if (pusher.connection.state === 'connected') return Promise.resolve(pusher.connection.socket_id);
  return new Promise((resolve, reject) => {
    const errors = [];
    const onState = ({ current }) => {
      if (current === 'connected') done(null, pusher.connection.socket_id);
      else if (current === 'failed' || current === 'disconnected' || current === 'unavailable')
        done(new Error(`connection went to '${current}' (errors: ${JSON.stringify(errors)})`));
    };
    const onError = (e) => errors.push(errorCode(e) ?? e);
    const timer = setTimeout(
      () => done(new Error(`timed out after ${timeout} ms waiting for 'connected' (state ${pusher.connection.state}, errors: ${JSON.stringify(errors)})`)),
      timeout,
    );
    function done(err, v) {
      clearTimeout(timer);
      pusher.connection.unbind('state_change', onState);
      pusher.connection.unbind('error', onError);
      err ? reject(err) : resolve(v);
    }
    pusher.connection.bind('state_change', onState);
    pusher.connection.bind('error', onError);
  });
}

/** Extract the Pusher error code from a pusher-js connection 'error' payload. */
function errorCode(e) {
  if (!e) return undefined;
  if (e.type === 'PusherError' && e.data) return e.data.code;
  if (e.error && e.error.type === 'PusherError' && e.error.data) return e.error.data.code;
  if (e.data && typeof e.data.code !== 'undefined') return e.data.code;
  return undefined;
}

/** Wait for a connection 'error' carrying a Pusher error code (optionally a specific one). Resolves with the code. */
async function connectionError(pusher, { code, timeout = DEFAULT_WAIT_MS } = {}) {
  const [e] = await once(pusher.connection, 'error', {
    timeout,
    what: code === undefined ? 'a pusher:error / close code' : `error code ${code}`,
    filter: (e) => {
      const c = errorCode(e);
      return code === undefined ? c !== undefined : c === code;
    },
  });
  return errorCode(e);
}

/** Subscribe and wait for pusher:subscription_succeeded. Rejects (with the error data) on pusher:subscription_error. */
function subscribe(pusher, name, { timeout = DEFAULT_WAIT_MS } = {}) {
  const channel = pusher.subscribe(name);
  return new Promise((resolve, reject) => {
    const ok = (data) => done(null, data);
    const bad = (data) => done(new Error(`subscription_error on ${name}: ${JSON.stringify(data)}`));
    const timer = setTimeout(() => done(new Error(`timed out after ${timeout} ms subscribing to ${name}`)), timeout);
    function done(err, data) {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', bad);
      err ? reject(err) : resolve(channel);
    }
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
  });
}

/** Subscribe and expect pusher:subscription_error. Resolves with the error data. */
function subscribeExpectingError(pusher, name, { timeout = DEFAULT_WAIT_MS } = {}) {
  const channel = pusher.subscribe(name);
  return new Promise((resolve, reject) => {
    const ok = () => done(new Error(`expected subscription_error on ${name}, got subscription_succeeded`));
    const bad = (data) => done(null, data);
    const timer = setTimeout(() => done(new Error(`timed out after ${timeout} ms waiting for subscription_error on ${name}`)), timeout);
    function done(err, data) {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', bad);
      err ? reject(err) : resolve({ channel, data });
    }
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
  });
}

/** Connected client subscribed to `name`. */
async function subscribedClient(name, opts = {}) {
  const pusher = client(opts);
  await connected(pusher);
  const channel = await subscribe(pusher, name);
  return { pusher, channel };
}

/** Unique channel name with a prefix. */
function uniq(prefix = '') {
  return `${prefix}conf-${crypto.randomBytes(5).toString('hex')}`;
}

/** Run an SDK request expecting an HTTP error; resolves with {status, body}. */
async function httpError(promise) {
  try {
    const res = await promise;
    const text = await res.text();
    throw new Error(`expected an HTTP error, got ${res.status}: ${text}`);
  } catch (e) {
    if (e && e.name === 'PusherRequestError') {
      if (e.status === undefined) throw new Error(`request failed without a response: ${e.error}`);
      return { status: e.status, body: e.body };
    }
    throw e;
  }
}

async function json(promise) {
  const res = await promise;
  if (res.status !== 200) throw new Error(`expected 200, got ${res.status}`);
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`response body is not JSON: ${JSON.stringify(text)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal raw WebSocket client (RFC 6455 over node:net), used where pusher-js would hide the
// wire detail under test: exact frame shapes, close codes, frames pusher-js refuses to send.

const liveRaw = new Set();

class RawSocket extends EventEmitter {
  constructor() {
    super();
    this.messages = [];
    this.closed = null; // {code, reason} once a close frame arrives or the TCP stream ends
    this.buf = Buffer.alloc(0);
  }

  static open(path, { timeout = DEFAULT_WAIT_MS } = {}) {
    const ws = new RawSocket();
    liveRaw.add(ws);
    return new Promise((resolve, reject) => {
      const key = crypto.randomBytes(16).toString('base64');
      const sock = net.connect(PORT, HOST);
      ws.sock = sock;
      let handshaken = false;
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`raw WebSocket handshake to ${path} timed out`));
      }, timeout);
      sock.on('connect', () => {
        sock.write(
          `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        );
      });
      sock.on('data', (chunk) => {
        ws.buf = Buffer.concat([ws.buf, chunk]);
        if (!handshaken) {
          const end = ws.buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = ws.buf.subarray(0, end).toString('latin1');
          ws.buf = ws.buf.subarray(end + 4);
          clearTimeout(timer);
          const status = Number(head.split(' ')[1]);
          if (status !== 101) {
            ws.httpStatus = status;
            sock.destroy();
            reject(Object.assign(new Error(`upgrade refused with HTTP ${status}`), { httpStatus: status }));
            return;
          }
          const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
          if (!head.toLowerCase().includes(`sec-websocket-accept: ${accept.toLowerCase()}`)) {
            sock.destroy();
            reject(new Error('bad Sec-WebSocket-Accept'));
            return;
          }
          handshaken = true;
          resolve(ws);
        }
        ws._parse();
      });
      const ended = () => {
        clearTimeout(timer);
        if (!ws.closed) ws.closed = { code: 1006, reason: 'TCP closed without a close frame' };
        ws.emit('closed', ws.closed);
        if (!handshaken) reject(new Error('connection closed during handshake'));
      };
      sock.on('close', ended);
      sock.on('error', () => {});
    });
  }

  _parse() {
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      let mask;
      if (masked) {
        if (b.length < off + 4) return;
        mask = b.subarray(off, off + 4);
        off += 4;
      }
      if (b.length < off + len) return;
      let payload = Buffer.from(b.subarray(off, off + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      this.buf = b.subarray(off + len);
      // (no fragmented messages expected from the server for these small frames)
      if (opcode === 1) {
        const text = payload.toString('utf8');
        let msg;
        try {
          msg = JSON.parse(text);
        } catch (e) {
          msg = { unparsable: text };
        }
        this.messages.push(msg);
        this.emit('message', msg);
      } else if (opcode === 2) {
        this.messages.push({ binary: payload });
        this.emit('message', { binary: payload });
      } else if (opcode === 8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        const reason = payload.length > 2 ? payload.subarray(2).toString('utf8') : '';
        this.closed = { code, reason };
        this._frame(8, payload.subarray(0, 2));
        this.emit('closed', this.closed);
        this.sock.end();
      } else if (opcode === 9) {
        this._frame(10, payload);
      } else if (opcode === 10) {
        this.emit('pong', payload);
      }
    }
  }

  _frame(opcode, payload) {
    if (this.sock.destroyed || !this.sock.writable) return;
    const mask = crypto.randomBytes(4);
    let header;
    if (payload.length < 126) {
      header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
    } else if (payload.length < 65536) {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 126;
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    const masked = Buffer.from(payload);
    for (let i = 0; i < masked.length; i++) masked[i] ^= mask[i % 4];
    this.sock.write(Buffer.concat([header, mask, masked]));
  }

  send(obj) {
    this._frame(1, Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj), 'utf8'));
  }

  sendBinary(buf) {
    this._frame(2, buf);
  }

  ping(payload = Buffer.from('hi')) {
    this._frame(9, payload);
  }

  /** Wait for the next message matching pred (also checks already-received ones from index `from`). */
  next(pred = () => true, { timeout = DEFAULT_WAIT_MS, what = 'a message', from = 0 } = {}) {
    for (let i = from; i < this.messages.length; i++) if (pred(this.messages[i])) return Promise.resolve(this.messages[i]);
    return new Promise((resolve, reject) => {
      const onMsg = (m) => {
        if (!pred(m)) return;
        clearTimeout(timer);
        this.off('message', onMsg);
        resolve(m);
      };
      const timer = setTimeout(() => {
        this.off('message', onMsg);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}; got ${JSON.stringify(this.messages)}`));
      }, timeout);
      this.on('message', onMsg);
    });
  }

  event(name, opts = {}) {
    return this.next((m) => m.event === name, { what: `'${name}'`, ...opts });
  }

  /** Wait for the close frame (or TCP end). Resolves with {code, reason}. */
  waitClosed({ timeout = DEFAULT_WAIT_MS } = {}) {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms waiting for close`)), timeout);
      this.once('closed', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
  }

  close() {
    liveRaw.delete(this);
    if (this.sock && !this.sock.destroyed) {
      const p = Buffer.alloc(2);
      p.writeUInt16BE(1000, 0);
      this._frame(8, p);
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 200).unref();
    }
  }
}

/** Raw connection to an app; resolves after pusher:connection_established with {ws, socketId, established}. */
async function rawConnect(app = APPS.main, query = 'protocol=7&client=js&version=8.6.0') {
  const ws = await RawSocket.open(`/app/${app.key}?${query}`);
  const established = await ws.event('pusher:connection_established');
  const data = typeof established.data === 'string' ? JSON.parse(established.data) : established.data;
  return { ws, socketId: data.socket_id, established };
}

/** Parse the `data` of a pusher:/pusher_internal: frame, which must be a JSON-encoded string. */
function internalData(frame) {
  if (typeof frame.data !== 'string') {
    throw new Error(`expected ${frame.event} data to be a JSON-encoded string, got ${JSON.stringify(frame.data)}`);
  }
  return JSON.parse(frame.data);
}

module.exports = {
  HOST,
  PORT,
  APPS,
  ENCRYPTION_MASTER_KEY_BASE64,
  DEFAULT_WAIT_MS,
  TEST_TIMEOUT_MS,
  QUIET_MS,
  T: { timeout: TEST_TIMEOUT_MS },
  server,
  client,
  closeClient,
  closeAll,
  sleep,
  once,
  record,
  recordAll,
  until,
  connected,
  errorCode,
  connectionError,
  subscribe,
  subscribeExpectingError,
  subscribedClient,
  uniq,
  httpError,
  json,
  RawSocket,
  rawConnect,
  internalData,
};
