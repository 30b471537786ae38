'use strict';
// §1 Connection: handshake, socket_id format, activity_timeout, ping/pong, protocol negotiation.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

test('pusher-js connects: state connected, socket_id matches /^\\d+\\.\\d+$/', h.T, async () => {
  const pusher = h.client();
  const states = h.record(pusher.connection, 'state_change');
  const socketId = await h.connected(pusher);
  assert.equal(pusher.connection.state, 'connected');
  assert.match(socketId, /^\d+\.\d+$/);
  assert.equal(pusher.connection.socket_id, socketId);
  assert.ok(states.some(({ data }) => data.previous === 'connecting' && data.current === 'connected'));
});

test('two connections get distinct socket ids', h.T, async () => {
  const a = h.client();
  const b = h.client();
  const [sa, sb] = await Promise.all([h.connected(a), h.connected(b)]);
  assert.notEqual(sa, sb);
});

test('raw: first frame is pusher:connection_established with string data {socket_id, activity_timeout: 120}', h.T, async () => {
  const ws = await h.RawSocket.open(`/app/${h.APPS.main.key}?protocol=7&client=js&version=8.6.0`);
  const first = await ws.next(() => true, { what: 'the first frame' });
  assert.equal(first.event, 'pusher:connection_established');
  const data = h.internalData(first);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.equal(data.activity_timeout, 120, 'activity_timeout comes from the config (seconds)');
});

test('raw: pusher:ping is answered with pusher:pong', h.T, async () => {
  const { ws } = await h.rawConnect();
  ws.send({ event: 'pusher:ping', data: {} });
  const pong = await ws.event('pusher:pong');
  assert.equal(pong.event, 'pusher:pong');
});

test('raw: WebSocket ping frame is answered with a pong frame', h.T, async () => {
  const { ws } = await h.rawConnect();
  const payload = Buffer.from('conformance');
  const got = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(payload);
  const pong = await Promise.race([got, h.sleep(h.DEFAULT_WAIT_MS).then(() => null)]);
  assert.ok(pong, 'no pong frame received');
  assert.deepEqual(pong, payload);
});

test('raw: missing protocol parameter → close 4008', h.T, async () => {
  const ws = await h.RawSocket.open(`/app/${h.APPS.main.key}?client=js&version=8.6.0`);
  const closed = await ws.waitClosed();
  assert.equal(closed.code, 4008, `close ${JSON.stringify(closed)}; frames ${JSON.stringify(ws.messages)}`);
});

test('raw: unsupported protocol version → close 4007', h.T, async () => {
  const ws = await h.RawSocket.open(`/app/${h.APPS.main.key}?protocol=5&client=js&version=8.6.0`);
  const closed = await ws.waitClosed();
  assert.equal(closed.code, 4007, `close ${JSON.stringify(closed)}; frames ${JSON.stringify(ws.messages)}`);
});

test('raw: unknown app key → pusher:error 4001 then close 4001', h.T, async () => {
  const ws = await h.RawSocket.open(`/app/no-such-key?protocol=7&client=js&version=8.6.0`);
  const closed = await ws.waitClosed();
  assert.equal(closed.code, 4001, `close ${JSON.stringify(closed)}; frames ${JSON.stringify(ws.messages)}`);
  const err = ws.messages.find((m) => m.event === 'pusher:error');
  if (err) assert.equal(h.internalData(err).code, 4001);
});

test('raw: subscribe to a public channel → subscription_succeeded with string data', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  const ok = await ws.event('pusher_internal:subscription_succeeded');
  assert.equal(ok.channel, name);
  assert.equal(typeof ok.data, 'string', 'pusher_internal data must be a JSON-encoded string');
  assert.deepEqual(JSON.parse(ok.data), {});
});
