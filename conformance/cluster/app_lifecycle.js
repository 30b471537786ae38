'use strict';
// An app's life across a cluster, seen through the real pusher-js 8.6.0 client: driven line by
// line from a Rust test (sockudo-testkit/tests/cluster_app_manager.rs), which changes the app
// through the admin API between the steps.
//
// stdin: one JSON command per line; stdout: one JSON answer per line (logs go to stderr).
//   {"cmd":"connect","id":"c","port":P,"key":K,"secret":S,"channel":"private-x","within_ms":20000}
//       Connect a client and subscribe it to `channel` (authorized with `secret`); an attempt
//       refused by the server (e.g. 4001: the key is not known there yet) is retried with a
//       fresh client until `within_ms`. → {"id","ok":true,"elapsed_ms","attempts"} or
//       {"id","ok":false,"error"}. Afterwards, when the server closes the connection:
//       {"id","event":"closed","code":C,"state":S} (C: the Pusher error code pusher-js got).
//   {"cmd":"subscribe","id":"c","channel":"private-y","secret":S}
//       Subscribe the connected client to another channel, authorized with `secret`.
//       → {"id","channel","subscribed":true} or {"id","channel","subscribed":false,"status"}.
//   {"cmd":"close","id":"c"} → {"id","closed_by_client":true}
// When stdin closes every client disconnects and the script exits 0.

const readline = require('node:readline');
const crypto = require('node:crypto');
const Pusher = require('pusher-js');

console.log = (...args) => console.error(...args);
if (process.env.PUSHER_DEBUG) Pusher.logToConsole = true;

const HOST = '127.0.0.1';
const clients = new Map(); // id -> {pusher, secret, key}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function errorCode(e) {
  if (!e) return undefined;
  if (e.type === 'PusherError' && e.data) return e.data.code;
  if (e.error && e.error.type === 'PusherError' && e.error.data) return e.error.data.code;
  if (e.data && typeof e.data.code !== 'undefined') return e.data.code;
  return undefined;
}

// The channel signature as Pusher apps compute it (HMAC-SHA256 of "socket_id:channel").
function sign(key, secret, socketId, channel) {
  const sig = crypto.createHmac('sha256', secret).update(`${socketId}:${channel}`).digest('hex');
  return `${key}:${sig}`;
}

function makeClient(port, state) {
  return new Pusher(state.key, {
    wsHost: HOST,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: {
      customHandler: (params, cb) => {
        cb(null, { auth: sign(state.key, state.secret, params.socketId, params.channelName) });
      },
    },
  });
}

// Connect and subscribe once; resolves {ok} or {ok:false, error, code}.
function attempt(pusher, channel, timeoutMs) {
  return new Promise((resolve) => {
    let code;
    const timer = setTimeout(() => done({ ok: false, error: 'timeout', code }), timeoutMs);
    const onError = (e) => {
      code = errorCode(e) ?? code;
    };
    const onState = ({ current }) => {
      if (current === 'connected') {
        const ch = pusher.subscribe(channel);
        ch.bind('pusher:subscription_succeeded', () => done({ ok: true }));
        ch.bind('pusher:subscription_error', (s) => done({ ok: false, error: `subscription_error ${JSON.stringify(s)}`, code }));
      } else if (['failed', 'disconnected', 'unavailable'].includes(current)) {
        done({ ok: false, error: `state ${current}`, code });
      }
    };
    function done(r) {
      clearTimeout(timer);
      pusher.connection.unbind('state_change', onState);
      pusher.connection.unbind('error', onError);
      resolve(r);
    }
    pusher.connection.bind('state_change', onState);
    pusher.connection.bind('error', onError);
  });
}

function watchClose(id, pusher) {
  let code;
  let reported = false;
  pusher.connection.bind('error', (e) => {
    code = errorCode(e) ?? code;
  });
  pusher.connection.bind('state_change', ({ current }) => {
    if (!reported && ['failed', 'disconnected', 'unavailable', 'connecting'].includes(current)) {
      reported = true;
      out({ id, event: 'closed', code: code ?? null, state: current });
      pusher.disconnect();
    }
  });
}

async function connect(cmd) {
  const started = Date.now();
  const deadline = started + (cmd.within_ms || 20000);
  const state = { key: cmd.key, secret: cmd.secret };
  let attempts = 0;
  let last;
  while (Date.now() < deadline) {
    attempts += 1;
    const pusher = makeClient(cmd.port, state);
    const r = await attempt(pusher, cmd.channel, Math.max(100, Math.min(5000, deadline - Date.now())));
    if (r.ok) {
      clients.set(cmd.id, { pusher, state });
      out({ id: cmd.id, ok: true, elapsed_ms: Date.now() - started, attempts });
      watchClose(cmd.id, pusher);
      return;
    }
    last = r;
    pusher.disconnect();
    await new Promise((res) => setTimeout(res, 20));
  }
  out({ id: cmd.id, ok: false, attempts, error: last ? `${last.error} (code ${last.code})` : 'no attempt' });
}

function subscribe(cmd) {
  const c = clients.get(cmd.id);
  if (!c) return out({ id: cmd.id, channel: cmd.channel, subscribed: false, status: 'no such client' });
  c.state.secret = cmd.secret;
  const ch = c.pusher.subscribe(cmd.channel);
  const timer = setTimeout(() => finish(false, 'timeout'), 10000);
  function finish(ok, status) {
    clearTimeout(timer);
    ch.unbind_all();
    c.pusher.unsubscribe(cmd.channel);
    out({ id: cmd.id, channel: cmd.channel, subscribed: ok, status });
  }
  ch.bind('pusher:subscription_succeeded', () => finish(true, 200));
  ch.bind('pusher:subscription_error', (s) => finish(false, s && s.status));
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return out({ error: `bad command ${line}: ${e.message}` });
  }
  if (cmd.cmd === 'connect') connect(cmd);
  else if (cmd.cmd === 'subscribe') subscribe(cmd);
  else if (cmd.cmd === 'close') {
    const c = clients.get(cmd.id);
    if (c) c.pusher.disconnect();
    clients.delete(cmd.id);
    out({ id: cmd.id, closed_by_client: true });
  } else out({ error: `unknown command ${cmd.cmd}` });
});
rl.on('close', () => {
  for (const c of clients.values()) c.pusher.disconnect();
  setTimeout(() => process.exit(0), 100);
});
