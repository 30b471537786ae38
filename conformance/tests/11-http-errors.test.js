'use strict';
// §5 HTTP error statuses and JSON error bodies.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

function assertJsonBody(body) {
  assert.doesNotThrow(() => JSON.parse(body), `error body is not JSON: ${JSON.stringify(body)}`);
}

test('trigger with data under 10 KB → 200', h.T, async () => {
  const res = await h.server().trigger(h.uniq(), 'e', 'x'.repeat(10000));
  assert.equal(res.status, 200);
});

test('trigger with data over 10 KB → 413 with a JSON body', h.T, async () => {
  const { status, body } = await h.httpError(h.server().trigger(h.uniq(), 'e', 'x'.repeat(11 * 1024)));
  assert.equal(status, 413, body);
  assertJsonBody(body);
});

test('an over-size event is not delivered', h.T, async () => {
  const name = h.uniq();
  const { channel } = await h.subscribedClient(name);
  const seen = h.record(channel, 'big');
  await h.httpError(h.server().trigger(name, 'big', 'x'.repeat(11 * 1024)));
  await h.sleep(h.QUIET_MS);
  assert.equal(seen.length, 0);
});

test('trigger to more than 100 channels → 400 with a JSON body (SDK-signed request)', h.T, async () => {
  // sdk.trigger refuses > 100 channels client-side, so send the same signed body via sdk.post
  const channels = Array.from({ length: 101 }, () => h.uniq());
  const { status, body } = await h.httpError(h.server().post({ path: '/events', body: { name: 'e', data: 'x', channels } }));
  assert.equal(status, 400, body);
  assertJsonBody(body);
});

test('batch of 10 → 200; batch of 11 → 400 with a JSON body, nothing delivered', h.T, async () => {
  const name = h.uniq();
  const { channel } = await h.subscribedClient(name);
  const seen = h.record(channel, 'b');
  const batch = (n) => Array.from({ length: n }, (_, i) => ({ channel: name, name: 'b', data: `item-${i}` }));
  const sdk = h.server();
  const ok = await sdk.triggerBatch(batch(10));
  assert.equal(ok.status, 200);
  await h.until(() => seen.length >= 10, { what: '10 batch events' });
  assert.deepEqual(seen.map((s) => s.data), Array.from({ length: 10 }, (_, i) => `item-${i}`), 'batch order preserved');
  const { status, body } = await h.httpError(sdk.triggerBatch(batch(11)));
  assert.equal(status, 400, body);
  assertJsonBody(body);
  await h.sleep(h.QUIET_MS);
  assert.equal(seen.length, 10, 'events of a rejected batch were delivered');
});

test('trigger without a channel → 400', h.T, async () => {
  const { status, body } = await h.httpError(h.server().post({ path: '/events', body: { name: 'e', data: 'x' } }));
  assert.equal(status, 400, body);
  assertJsonBody(body);
});

test('trigger with an invalid channel name → 400', h.T, async () => {
  const { status, body } = await h.httpError(
    h.server().post({ path: '/events', body: { name: 'e', data: 'x', channels: ['bad channel!'] } }),
  );
  assert.equal(status, 400, body);
});

test('unknown API path → 404', h.T, async () => {
  const { status } = await h.httpError(h.server().get({ path: '/no-such-endpoint' }));
  assert.equal(status, 404);
});
