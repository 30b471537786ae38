'use strict';
// §3 client events: private/presence only, not echoed, app switch, rate limit 4301.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

test('private channel: client-hello from A reaches B, not A', h.T, async () => {
  const name = h.uniq('private-');
  const a = await h.subscribedClient(name);
  const b = await h.subscribedClient(name);
  const seenA = h.record(a.channel, 'client-hello');
  const seenB = h.record(b.channel, 'client-hello');
  const errorsA = h.record(a.pusher.connection, 'error');
  assert.equal(a.channel.trigger('client-hello', { from: 'A', n: 1 }), true);
  await h.until(() => seenB.length >= 1, { what: 'client-hello at B' });
  assert.deepEqual(seenB[0].data, { from: 'A', n: 1 });
  await h.sleep(h.QUIET_MS);
  assert.equal(seenA.length, 0, 'client event echoed to its sender');
  assert.equal(seenB.length, 1);
  assert.deepEqual(errorsA, []);
});

test('presence channel: delivered client event carries the sender user_id', h.T, async () => {
  const name = h.uniq('presence-');
  const a = await h.subscribedClient(name, { presence: { user_id: 'sender-1', user_info: {} } });
  const b = await h.subscribedClient(name, { presence: { user_id: 'receiver-1', user_info: {} } });
  const got = h.once(b.channel, 'client-typing');
  a.channel.trigger('client-typing', { t: true });
  const [data, metadata] = await got;
  assert.deepEqual(data, { t: true });
  assert.equal(metadata && metadata.user_id, 'sender-1');
});

test('public channel: client event is rejected with pusher:error and not delivered', h.T, async () => {
  const name = h.uniq();
  const a = await h.subscribedClient(name);
  const b = await h.subscribedClient(name);
  const seenB = h.record(b.channel, 'client-nope');
  const err = h.connectionError(a.pusher);
  a.channel.trigger('client-nope', { x: 1 });
  await err;
  await h.sleep(h.QUIET_MS);
  assert.equal(seenB.length, 0, 'client event on a public channel was delivered');
});

test('app with enable_client_messages = false: client event rejected and not delivered', h.T, async () => {
  const app = h.APPS.noClientEvents;
  const name = h.uniq('private-');
  const a = await h.subscribedClient(name, { app });
  const b = await h.subscribedClient(name, { app });
  const seenB = h.record(b.channel, 'client-nope');
  const err = h.connectionError(a.pusher);
  a.channel.trigger('client-nope', { x: 1 });
  await err;
  await h.sleep(h.QUIET_MS);
  assert.equal(seenB.length, 0, 'client event delivered although the app disables client messages');
});

test('rate limit: more than 10 client events in one second → pusher:error 4301', h.T, async () => {
  const name = h.uniq('private-');
  const a = await h.subscribedClient(name);
  const b = await h.subscribedClient(name);
  const seenB = h.record(b.channel, 'client-burst');
  const err = h.connectionError(a.pusher, { code: 4301 });
  for (let i = 0; i < 15; i++) a.channel.trigger('client-burst', { i });
  assert.equal(await err, 4301);
  await h.sleep(h.QUIET_MS);
  assert.ok(seenB.length >= 1, 'no client event delivered at all');
  assert.ok(seenB.length <= 10, `${seenB.length} client events delivered within one second (limit 10)`);
});

test('raw: client event on a private-encrypted channel is rejected and not delivered', h.T, async () => {
  const name = h.uniq('private-encrypted-');
  const sdk = h.server();
  const a = await h.rawConnect();
  const b = await h.rawConnect();
  for (const c of [a, b]) {
    c.ws.send({ event: 'pusher:subscribe', data: { channel: name, auth: sdk.authorizeChannel(c.socketId, name).auth } });
    await c.ws.event('pusher_internal:subscription_succeeded');
  }
  a.ws.send({ event: 'client-x', channel: name, data: { x: 1 } });
  await a.ws.event('pusher:error');
  await h.sleep(h.QUIET_MS);
  assert.equal(b.ws.messages.filter((m) => m.event === 'client-x').length, 0);
});

test('raw: client event on a channel the sender has not subscribed is not delivered', h.T, async () => {
  const name = h.uniq('private-');
  const b = await h.subscribedClient(name);
  const seenB = h.record(b.channel, 'client-sneak');
  const { ws } = await h.rawConnect();
  ws.send({ event: 'client-sneak', channel: name, data: { x: 1 } });
  await h.sleep(h.QUIET_MS);
  assert.equal(seenB.length, 0);
});
