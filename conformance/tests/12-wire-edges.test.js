'use strict';
// §1–§3 wire edges that pusher-js never produces itself, checked with the raw client.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

const refusal = (m) => m.event === 'pusher:subscription_error' || m.event === 'pusher:error';

async function expectSubscribeRefused(ws, channel, extra = {}) {
  const from = ws.messages.length; // only replies to this subscribe count
  ws.send({ event: 'pusher:subscribe', data: { channel, ...extra } });
  const frame = await ws.next((m) => refusal(m) || m.event === 'pusher_internal:subscription_succeeded', {
    what: `a reply to subscribing ${channel.slice(0, 40)}…`,
    from,
  });
  assert.notEqual(frame.event, 'pusher_internal:subscription_succeeded', `subscribed to ${channel}`);
  return frame;
}

test('pusher:error data is a JSON string {message, code}', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await ws.event('pusher_internal:subscription_succeeded');
  ws.send({ event: 'client-x', channel: name, data: {} }); // client event on a public channel
  const err = await ws.event('pusher:error');
  const data = h.internalData(err);
  assert.equal(typeof data.message, 'string');
  assert.ok(data.code === null || (Number.isInteger(data.code) && data.code >= 4000 && data.code < 5000), JSON.stringify(data));
});

test('rate-limit pusher:error frame carries code 4301', h.T, async () => {
  const sdk = h.server();
  const name = h.uniq('private-');
  const { ws, socketId } = await h.rawConnect();
  ws.send({ event: 'pusher:subscribe', data: { channel: name, auth: sdk.authorizeChannel(socketId, name).auth } });
  await ws.event('pusher_internal:subscription_succeeded');
  for (let i = 0; i < 15; i++) ws.send({ event: 'client-burst', channel: name, data: { i } });
  const err = await ws.next((m) => m.event === 'pusher:error' && h.internalData(m).code === 4301, { what: 'pusher:error 4301' });
  assert.equal(typeof h.internalData(err).message, 'string');
});

test('channel name of 164 chars is accepted, 165 is refused', h.T, async () => {
  const { ws } = await h.rawConnect();
  const base = h.uniq();
  const ok = base + 'a'.repeat(164 - base.length);
  ws.send({ event: 'pusher:subscribe', data: { channel: ok } });
  const frame = await ws.next((m) => refusal(m) || m.event === 'pusher_internal:subscription_succeeded');
  assert.equal(frame.event, 'pusher_internal:subscription_succeeded', JSON.stringify(frame));
  await expectSubscribeRefused(ws, ok + 'a');
});

test('channel name with a forbidden character is refused', h.T, async () => {
  const { ws } = await h.rawConnect();
  await expectSubscribeRefused(ws, h.uniq() + ' space');
  await expectSubscribeRefused(ws, h.uniq() + '/slash');
});

test('channel name using every allowed character class is accepted', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq() + 'AZaz09_-=@,.;';
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  const frame = await ws.next((m) => refusal(m) || m.event === 'pusher_internal:subscription_succeeded');
  assert.equal(frame.event, 'pusher_internal:subscription_succeeded', JSON.stringify(frame));
  await h.server().trigger(name, 'e', 'through');
  assert.equal((await ws.event('e')).data, 'through');
});

test('presence user_id longer than 128 chars is refused', h.T, async () => {
  const sdk = h.server();
  const name = h.uniq('presence-');
  const { ws, socketId } = await h.rawConnect();
  const signed = sdk.authorizeChannel(socketId, name, { user_id: 'u'.repeat(129) });
  await expectSubscribeRefused(ws, name, { auth: signed.auth, channel_data: signed.channel_data });
});

test('binary frames are refused: a subscribe sent as binary is not processed', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.sendBinary(Buffer.from(JSON.stringify({ event: 'pusher:subscribe', data: { channel: name } })));
  await h.sleep(h.QUIET_MS);
  assert.equal(ws.messages.filter((m) => m.event === 'pusher_internal:subscription_succeeded').length, 0);
});

test('subscribing twice to the same channel does not duplicate delivery', h.T, async () => {
  const { ws } = await h.rawConnect();
  const name = h.uniq();
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await ws.event('pusher_internal:subscription_succeeded');
  ws.send({ event: 'pusher:subscribe', data: { channel: name } });
  await h.sleep(200);
  await h.server().trigger(name, 'e', 'once');
  await ws.event('e');
  await h.sleep(h.QUIET_MS);
  assert.equal(ws.messages.filter((m) => m.event === 'e').length, 1);
});

test('sendToUser for a user with no connections → 200', h.T, async () => {
  const res = await h.server().sendToUser(h.uniq('ghost-'), 'e', 'x');
  assert.equal(res.status, 200);
});
