'use strict';
// §2 public channels + HTTP trigger delivery.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

test('public channel: subscribe succeeds', h.T, async () => {
  const name = h.uniq();
  const { channel } = await h.subscribedClient(name);
  assert.equal(channel.subscribed, true);
  assert.equal(channel.name, name);
});

test('trigger with string data delivers the exact string, once', h.T, async () => {
  const name = h.uniq();
  const { channel } = await h.subscribedClient(name);
  const seen = h.record(channel, 'greeting');
  const sdk = h.server();
  const data = 'hello wörld ✓ "quoted" \\ back';
  const res = await sdk.trigger(name, 'greeting', data);
  assert.equal(res.status, 200);
  await h.until(() => seen.length >= 1, { what: 'greeting' });
  assert.equal(seen[0].data, data);
  await h.sleep(h.QUIET_MS);
  assert.equal(seen.length, 1, 'delivered exactly once');
});

test('trigger with object data: SDK JSON-encodes, pusher-js receives the same object', h.T, async () => {
  const name = h.uniq();
  const { channel } = await h.subscribedClient(name);
  const sdk = h.server();
  const data = { a: 1, b: [1, 2, { c: null }], s: 'x', nested: { t: true, f: 1.5 } };
  const got = h.once(channel, 'obj');
  await sdk.trigger(name, 'obj', data);
  const [received] = await got;
  assert.deepEqual(received, data);
});

test('raw: app event data is delivered exactly as published (a string stays a string)', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await ws.event('pusher_internal:subscription_succeeded');
  await h.server().trigger(name, 'evt', { k: 'v' });
  const frame = await ws.event('evt');
  assert.equal(frame.channel, name);
  assert.equal(frame.data, '{"k":"v"}', 'data is the string the publisher sent');
});

test('trigger reaches every subscriber of the channel and no one else', h.T, async () => {
  const name = h.uniq();
  const other = h.uniq();
  const a = await h.subscribedClient(name);
  const b = await h.subscribedClient(name);
  const c = await h.subscribedClient(other);
  const seenA = h.record(a.channel, 'e');
  const seenB = h.record(b.channel, 'e');
  const seenC = h.record(c.channel, 'e');
  await h.server().trigger(name, 'e', 'x');
  await h.until(() => seenA.length && seenB.length, { what: 'delivery to both subscribers' });
  await h.sleep(h.QUIET_MS);
  assert.equal(seenA.length, 1);
  assert.equal(seenB.length, 1);
  assert.equal(seenC.length, 0);
});

test('raw: pusher:unsubscribe stops delivery and vacates the channel', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await ws.event('pusher_internal:subscription_succeeded');
  ws.send({ event: 'pusher:unsubscribe', data: { channel: name } });
  const sdk = h.server();
  // unsubscribe has no reply; wait until the API sees the channel vacated
  let info;
  const deadline = Date.now() + h.DEFAULT_WAIT_MS;
  do {
    info = await h.json(sdk.get({ path: `/channels/${name}` }));
    if (!info.occupied) break;
    await h.sleep(50);
  } while (Date.now() < deadline);
  assert.equal(info.occupied, false, 'channel still occupied after the only subscriber unsubscribed');
  const before = ws.messages.length;
  await sdk.trigger(name, 'e', 'x');
  await h.sleep(h.QUIET_MS);
  assert.deepEqual(ws.messages.slice(before).filter((m) => m.channel === name), []);
});
