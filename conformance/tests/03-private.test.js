'use strict';
// §2 private channels: HMAC auth via the SDK's authorizeChannel.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

test('private channel: valid auth → subscription_succeeded, then receives triggers', h.T, async () => {
  const name = h.uniq('private-');
  const { channel } = await h.subscribedClient(name);
  assert.equal(channel.subscribed, true);
  const got = h.once(channel, 'secret-news');
  await h.server().trigger(name, 'secret-news', { n: 42 });
  const [data] = await got;
  assert.deepEqual(data, { n: 42 });
});

test('private channel: bad signature → pusher:subscription_error {type: AuthError, status: 401}', h.T, async () => {
  const name = h.uniq('private-');
  const pusher = h.client({ badAuth: true });
  await h.connected(pusher);
  const { channel, data } = await h.subscribeExpectingError(pusher, name);
  assert.equal(channel.subscribed, false);
  assert.equal(data.type, 'AuthError', JSON.stringify(data));
  assert.equal(data.status, 401, JSON.stringify(data));
  assert.equal(typeof data.error, 'string', JSON.stringify(data));
  // the rejected client is not a subscriber: a trigger does not reach it
  const seen = h.record(channel, 'e');
  await h.server().trigger(name, 'e', 'x');
  await h.sleep(h.QUIET_MS);
  assert.equal(seen.length, 0);
});

test('private channel: auth signed for another socket id is rejected', h.T, async () => {
  const name = h.uniq('private-');
  const sdk = h.server();
  const { ws, socketId } = await h.rawConnect();
  const other = socketId === '1.1' ? '2.2' : '1.1';
  const { auth } = sdk.authorizeChannel(other, name);
  ws.send({ event: 'pusher:subscribe', data: { channel: name, auth } });
  const frame = await ws.next((m) => m.event === 'pusher:subscription_error' || m.event === 'pusher_internal:subscription_succeeded');
  assert.equal(frame.event, 'pusher:subscription_error');
  assert.equal(frame.channel, name);
  const data = h.internalData(frame);
  assert.equal(data.type, 'AuthError');
  assert.equal(data.status, 401);
});

test('private channel: auth signed with another app\'s credentials is rejected', h.T, async () => {
  const name = h.uniq('private-');
  const foreign = h.server(h.APPS.noClientEvents);
  const { ws, socketId } = await h.rawConnect();
  const { auth } = foreign.authorizeChannel(socketId, name);
  ws.send({ event: 'pusher:subscribe', data: { channel: name, auth } });
  const frame = await ws.next((m) => m.event === 'pusher:subscription_error' || m.event === 'pusher_internal:subscription_succeeded');
  assert.equal(frame.event, 'pusher:subscription_error');
});

test('raw: private channel without auth is rejected', h.T, async () => {
  const name = h.uniq('private-');
  const { ws } = await h.rawConnect();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  const frame = await ws.next((m) => m.event === 'pusher:subscription_error' || m.event === 'pusher_internal:subscription_succeeded' || m.event === 'pusher:error');
  assert.notEqual(frame.event, 'pusher_internal:subscription_succeeded');
});
