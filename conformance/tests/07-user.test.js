'use strict';
// §3 signin, §5 sendToUser (#server-to-user-{id}) and terminate_connections.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./helpers');

afterEach(h.closeAll);

async function signedIn(user, opts = {}) {
  const pusher = h.client({ user, ...opts });
  await h.connected(pusher);
  const success = h.once(pusher.connection, 'message', {
    what: 'pusher:signin_success',
    filter: (m) => m.event === 'pusher:signin_success',
  });
  pusher.signin();
  const [msg] = await success;
  assert.deepEqual(JSON.parse(msg.data.user_data), user);
  assert.deepEqual(pusher.user.user_data, user);
  // pusher-js then subscribes to #server-to-user-{id}; wait until the server confirms it
  const ch = pusher.user.serverToUserChannel;
  assert.ok(ch, 'pusher-js did not create the server-to-user channel');
  if (!ch.subscribed) await h.once(ch, 'pusher:subscription_succeeded', { what: `subscription_succeeded on ${ch.name}` });
  return pusher;
}

const uid = () => h.uniq('user-');

test('signin succeeds and sendToUser reaches every connection of that user only', h.T, async () => {
  const id = uid();
  const user = { id, name: 'Conformance User' };
  const p1 = await signedIn(user);
  const p2 = await signedIn(user);
  const other = await signedIn({ id: uid() });
  const seen1 = h.record(p1.user, 'notice');
  const seen2 = h.record(p2.user, 'notice');
  const seenOther = h.record(other.user, 'notice');
  const res = await h.server().sendToUser(id, 'notice', { hello: id });
  assert.equal(res.status, 200);
  await h.until(() => seen1.length && seen2.length, { what: 'notice on both connections of the user' });
  assert.deepEqual(seen1[0].data, { hello: id });
  assert.deepEqual(seen2[0].data, { hello: id });
  await h.sleep(h.QUIET_MS);
  assert.equal(seen1.length, 1);
  assert.equal(seenOther.length, 0);
});

test('terminateUserConnections closes all of that user\'s connections and no others', h.T, async () => {
  const id = uid();
  const p1 = await signedIn({ id });
  const p2 = await signedIn({ id });
  const bystander = await signedIn({ id: uid() });
  const anon = h.client();
  const anonSocket = await h.connected(anon);
  const bystanderSocket = bystander.connection.socket_id;
  const left = (p) =>
    h.once(p.connection, 'state_change', { what: 'leaving connected', filter: (s) => s.previous === 'connected' });
  const gone = Promise.all([left(p1), left(p2)]);
  const res = await h.server().terminateUserConnections(id);
  assert.equal(res.status, 200);
  await gone;
  await h.sleep(h.QUIET_MS);
  assert.equal(bystander.connection.state, 'connected');
  assert.equal(bystander.connection.socket_id, bystanderSocket);
  assert.equal(anon.connection.state, 'connected');
  assert.equal(anon.connection.socket_id, anonSocket);
});

test('signin with a bad signature → error 4009 and the connection is closed', h.T, async () => {
  const pusher = h.client({ user: { id: uid() }, badSignin: true });
  await h.connected(pusher);
  const err = h.connectionError(pusher, { code: 4009 });
  const left = h.once(pusher.connection, 'state_change', { filter: (s) => s.previous === 'connected', what: 'close' });
  pusher.signin();
  assert.equal(await err, 4009);
  await left;
});

test('raw: signin_success data is {user_data} as a JSON string', h.T, async () => {
  const { ws, socketId } = await h.rawConnect();
  const user = { id: uid(), info: { x: 1 } };
  const signed = h.server().authenticateUser(socketId, user);
  ws.send({ event: 'pusher:signin', data: signed });
  const ok = await ws.event('pusher:signin_success');
  assert.deepEqual(h.internalData(ok), { user_data: signed.user_data });
});

test('raw: a client cannot subscribe to another user\'s #server-to-user channel', h.T, async () => {
  const me = uid();
  const victim = uid();
  const { ws, socketId } = await h.rawConnect();
  const signed = h.server().authenticateUser(socketId, { id: me });
  ws.send({ event: 'pusher:signin', data: signed });
  await ws.event('pusher:signin_success');
  ws.send({ event: 'pusher:subscribe', data: { channel: `#server-to-user-${victim}` } });
  await h.sleep(h.QUIET_MS);
  assert.equal(
    ws.messages.filter((m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${victim}`).length,
    0,
    'subscribed to another user\'s channel',
  );
  await h.server().sendToUser(victim, 'private-note', 'for the victim only');
  await h.sleep(h.QUIET_MS);
  assert.equal(ws.messages.filter((m) => m.event === 'private-note').length, 0);
});
