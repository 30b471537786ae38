'use strict';
// §2 cache channels: pusher:cache_miss when nothing is cached, else the last event right after subscribe.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

async function freshSubscriber(name) {
  const pusher = h.client({ presence: { user_id: h.uniq('u-'), user_info: {} } });
  await h.connected(pusher);
  const channel = pusher.subscribe(name);
  const events = h.recordAll(channel);
  await h.once(channel, 'pusher:subscription_succeeded', { what: `subscription_succeeded on ${name}` });
  return { pusher, channel, events };
}

for (const prefix of ['cache-', 'private-cache-', 'presence-cache-']) {
  test(`${prefix}: nothing cached → pusher:cache_miss on the channel`, h.T, async () => {
    const name = h.uniq(prefix);
    const { channel, events } = await freshSubscriber(name);
    await h.until(() => events.some((e) => e.event === 'pusher:cache_miss'), { what: 'pusher:cache_miss' });
    assert.equal(channel.subscribed, true);
    const names = events.map((e) => e.event);
    assert.ok(names.indexOf('pusher:subscription_succeeded') < names.indexOf('pusher:cache_miss'), names.join(','));
  });

  test(`${prefix}: a new subscriber immediately gets the last event published`, h.T, async () => {
    const name = h.uniq(prefix);
    const sdk = h.server();
    await sdk.trigger(name, 'state', { v: 1 });
    await sdk.trigger(name, 'state', { v: 2 });
    const { events } = await freshSubscriber(name);
    await h.until(() => events.some((e) => e.event === 'state'), { what: 'the cached event' });
    await h.sleep(h.QUIET_MS);
    const names = events.map((e) => e.event);
    assert.equal(names[0], 'pusher:subscription_succeeded', names.join(','));
    const states = events.filter((e) => e.event === 'state');
    assert.deepEqual(states.map((e) => e.data), [{ v: 2 }], 'only the last event is replayed');
    assert.ok(!names.includes('pusher:cache_miss'), names.join(','));
  });
}

test('raw: cache_miss frame names the channel', h.T, async () => {
  const name = h.uniq('cache-');
  const { ws } = await h.rawConnect();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await ws.event('pusher_internal:subscription_succeeded');
  const miss = await ws.event('pusher:cache_miss');
  assert.equal(miss.channel, name);
});

test('cache channel: live subscribers still get every event', h.T, async () => {
  const name = h.uniq('cache-');
  const { channel } = await h.subscribedClient(name);
  const seen = h.record(channel, 'tick');
  const sdk = h.server();
  for (let i = 0; i < 3; i++) await sdk.trigger(name, 'tick', { i });
  await h.until(() => seen.length >= 3, { what: '3 ticks' });
  assert.deepEqual(seen.map((s) => s.data), [{ i: 0 }, { i: 1 }, { i: 2 }]);
});
