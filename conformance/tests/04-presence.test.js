'use strict';
// §2 presence channels: member list, member_added/removed, multi-connection users, caps.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

const member = (user_id, user_info) => ({ presence: { user_id, user_info } });

function memberIds(channel) {
  const ids = [];
  channel.members.each((m) => ids.push(m.id));
  return ids.sort();
}

test('presence: second member sees both; first gets member_added; disconnect → member_removed', h.T, async () => {
  const name = h.uniq('presence-');
  const a = await h.subscribedClient(name, member('user-a', { name: 'Alice' }));
  assert.equal(a.channel.members.count, 1);
  assert.deepEqual(a.channel.members.me, { id: 'user-a', info: { name: 'Alice' } });

  const added = h.once(a.channel, 'pusher:member_added');
  const b = await h.subscribedClient(name, member('user-b', { name: 'Bob' }));
  assert.equal(b.channel.members.count, 2);
  assert.deepEqual(b.channel.members.me, { id: 'user-b', info: { name: 'Bob' } });
  assert.deepEqual(memberIds(b.channel), ['user-a', 'user-b']);
  assert.deepEqual(b.channel.members.get('user-a'), { id: 'user-a', info: { name: 'Alice' } });

  const [m] = await added;
  assert.deepEqual(m, { id: 'user-b', info: { name: 'Bob' } });
  assert.equal(a.channel.members.count, 2);

  const removed = h.once(a.channel, 'pusher:member_removed', { timeout: 5000 });
  h.closeClient(b.pusher);
  const [r] = await removed;
  assert.equal(r.id, 'user-b');
  assert.equal(a.channel.members.count, 1);
});

test('raw: presence subscription_succeeded data is {presence:{ids,hash,count}} as a JSON string', h.T, async () => {
  const name = h.uniq('presence-');
  await h.subscribedClient(name, member('user-a', { n: 1 }));
  const sdk = h.server();
  const { ws, socketId } = await h.rawConnect();
  const auth = sdk.authorizeChannel(socketId, name, { user_id: 'user-raw', user_info: { n: 2 } });
  ws.send({ event: 'pusher:subscribe', data: { channel: name, auth: auth.auth, channel_data: auth.channel_data } });
  const ok = await ws.event('pusher_internal:subscription_succeeded');
  assert.equal(ok.channel, name);
  const data = h.internalData(ok);
  assert.deepEqual(Object.keys(data), ['presence']);
  assert.equal(data.presence.count, 2);
  assert.deepEqual([...data.presence.ids].sort(), ['user-a', 'user-raw']);
  assert.deepEqual(data.presence.hash, { 'user-a': { n: 1 }, 'user-raw': { n: 2 } });
});

test('presence: the same user on two connections → one member_added, member_removed only after the last leaves', h.T, async () => {
  const name = h.uniq('presence-');
  const watcher = await h.subscribedClient(name, member('watcher', {}));
  const added = h.record(watcher.channel, 'pusher:member_added');
  const removed = h.record(watcher.channel, 'pusher:member_removed');

  const d1 = await h.subscribedClient(name, member('dup', { c: 1 }));
  await h.until(() => added.length >= 1, { what: 'member_added for dup' });
  const d2 = await h.subscribedClient(name, member('dup', { c: 1 }));
  assert.equal(d2.channel.members.count, 2, 'dup counts once in the member list');
  await h.sleep(h.QUIET_MS);
  assert.equal(added.length, 1, `member_added events: ${JSON.stringify(added)}`);
  assert.equal(added[0].data.id, 'dup');
  assert.equal(watcher.channel.members.count, 2);

  h.closeClient(d1.pusher);
  await h.sleep(1000);
  assert.equal(removed.length, 0, 'member_removed sent while the user still has a connection');

  h.closeClient(d2.pusher);
  await h.until(() => removed.length >= 1, { timeout: 5000, what: 'member_removed for dup' });
  assert.equal(removed[0].data.id, 'dup');
  await h.sleep(h.QUIET_MS);
  assert.equal(removed.length, 1);
});

test('presence: member cap (max_presence_members = 2) → third distinct user gets subscription_error', h.T, async () => {
  const app = h.APPS.smallPresence;
  const name = h.uniq('presence-');
  await h.subscribedClient(name, { app, ...member('u1', {}) });
  await h.subscribedClient(name, { app, ...member('u2', {}) });
  const third = h.client({ app, ...member('u3', {}) });
  await h.connected(third);
  const { channel } = await h.subscribeExpectingError(third, name);
  assert.equal(channel.subscribed, false);
  const info = await h.json(h.server(app).get({ path: `/channels/${name}/users` }));
  assert.deepEqual(info.users.map((u) => u.id).sort(), ['u1', 'u2']);
});

test('presence: user_info over max_presence_user_info_bytes (1 KB) → subscription_error', h.T, async () => {
  const name = h.uniq('presence-');
  const pusher = h.client(member('big', { blob: 'x'.repeat(2048) }));
  await h.connected(pusher);
  await h.subscribeExpectingError(pusher, name);
});

test('presence: channel_data signed for a different user_id is rejected', h.T, async () => {
  const name = h.uniq('presence-');
  const sdk = h.server();
  const { ws, socketId } = await h.rawConnect();
  const signed = sdk.authorizeChannel(socketId, name, { user_id: 'honest' });
  ws.send({
    event: 'pusher:subscribe',
    data: { channel: name, auth: signed.auth, channel_data: JSON.stringify({ user_id: 'impostor' }) },
  });
  const frame = await ws.next((m) => m.event === 'pusher:subscription_error' || m.event === 'pusher_internal:subscription_succeeded');
  assert.equal(frame.event, 'pusher:subscription_error');
  assert.equal(h.internalData(frame).status, 401);
});
