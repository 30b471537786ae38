'use strict';
// §2 private-encrypted channels: the server only relays {nonce, ciphertext}; pusher-js decrypts with
// the shared_secret returned by the SDK's authorizeChannel (encryptionMasterKeyBase64 set in helpers).
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

test('pusher-js build in use bundles tweetnacl (encrypted channels supported)', () => {
  const p = new (require('pusher-js'))('k', { cluster: 'mt1', wsHost: h.HOST, wsPort: 1, enabledTransports: ['ws'] });
  try {
    assert.ok(p.config.nacl && typeof p.config.nacl.secretbox === 'function');
  } finally {
    p.disconnect();
  }
});

test('private-encrypted: subscribe with auth + shared_secret succeeds and a triggered event is decrypted', h.T, async () => {
  const name = h.uniq('private-encrypted-');
  const { channel } = await h.subscribedClient(name);
  assert.equal(channel.subscribed, true);
  const got = h.once(channel, 'sealed');
  const payload = { msg: 'top secret', n: [1, 2, 3] };
  const res = await h.server().trigger(name, 'sealed', payload);
  assert.equal(res.status, 200);
  const [data] = await got;
  assert.deepEqual(data, payload);
});

test('raw: encrypted event is relayed untouched as {nonce, ciphertext}', h.T, async () => {
  const name = h.uniq('private-encrypted-');
  const sdk = h.server();
  const { ws, socketId } = await h.rawConnect();
  const { auth } = sdk.authorizeChannel(socketId, name);
  ws.send({ event: 'pusher:subscribe', data: { channel: name, auth } });
  await ws.event('pusher_internal:subscription_succeeded');
  await sdk.trigger(name, 'sealed', 'plaintext never visible');
  const frame = await ws.event('sealed');
  const body = typeof frame.data === 'string' ? JSON.parse(frame.data) : frame.data;
  assert.deepEqual(Object.keys(body).sort(), ['ciphertext', 'nonce']);
  assert.ok(!JSON.stringify(frame).includes('plaintext never visible'));
});

test('private-encrypted: bad signature → subscription_error', h.T, async () => {
  const name = h.uniq('private-encrypted-');
  const pusher = h.client({ badAuth: true });
  await h.connected(pusher);
  const { data } = await h.subscribeExpectingError(pusher, name);
  assert.equal(data.status, 401, JSON.stringify(data));
});
