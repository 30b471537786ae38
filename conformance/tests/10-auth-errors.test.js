'use strict';
// §1/§5 authentication and app-level refusals, as seen by the real SDK and the real pusher-js.
const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const crypto = require('node:crypto');
const h = require('./helpers');

afterEach(h.closeAll);

/** Hand-signed API request (for cases the SDK cannot produce). */
function signedRequest({ app = h.APPS.main, method = 'POST', path, body, timestamp, bodyMd5 }) {
  const fullPath = `/apps/${app.id}${path}`;
  const params = {
    auth_key: app.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
  };
  const text = body === undefined ? undefined : JSON.stringify(body);
  if (bodyMd5 !== undefined) params.body_md5 = bodyMd5;
  else if (text) params.body_md5 = crypto.createHash('md5').update(text).digest('hex');
  const query = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
  const sig = crypto.createHmac('sha256', app.secret).update(`${method}\n${fullPath}\n${query}`).digest('hex');
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: h.HOST, port: h.PORT, method, path: `${fullPath}?${query}&auth_signature=${sig}`, headers: text ? { 'content-type': 'application/json' } : {} },
      (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => resolve({ status: res.statusCode, body: data }));
      },
    );
    req.on('error', reject);
    if (text) req.write(text);
    req.end();
  });
}

const event = (channel) => ({ name: 'e', channel, data: 'x' });

test('hand-signed request (reference signing) is accepted', h.T, async () => {
  const res = await signedRequest({ path: '/events', body: event(h.uniq()) });
  assert.equal(res.status, 200, res.body);
});

test('GET carrying body_md5 of the empty body (as the Python SDK sends) is accepted', h.T, async () => {
  const res = await signedRequest({ method: 'GET', path: '/channels', bodyMd5: crypto.createHash('md5').update('').digest('hex') });
  assert.equal(res.status, 200, res.body);
  assert.ok(JSON.parse(res.body).channels, res.body);
});

test('SDK with the wrong secret → 401', h.T, async () => {
  const sdk = h.server({ ...h.APPS.main, secret: 'not-the-secret' });
  const { status, body } = await h.httpError(sdk.trigger(h.uniq(), 'e', 'x'));
  assert.equal(status, 401, body);
  const { status: s2 } = await h.httpError(sdk.get({ path: '/channels' }));
  assert.equal(s2, 401);
});

test('SDK with an unknown app id → 4xx', h.T, async () => {
  const sdk = h.server({ id: '999999', key: 'nobody-key', secret: 'nobody-secret' });
  const { status, body } = await h.httpError(sdk.trigger(h.uniq(), 'e', 'x'));
  assert.ok(status >= 400 && status < 500, `status ${status}: ${body}`);
});

test('SDK with another app\'s key for this app id → 401', h.T, async () => {
  const other = h.APPS.noClientEvents;
  const sdk = h.server({ id: h.APPS.main.id, key: other.key, secret: other.secret });
  const { status, body } = await h.httpError(sdk.trigger(h.uniq(), 'e', 'x'));
  assert.equal(status, 401, body);
});

test('auth_timestamp older than 600 s → 401', h.T, async () => {
  const res = await signedRequest({ path: '/events', body: event(h.uniq()), timestamp: Math.floor(Date.now() / 1000) - 700 });
  assert.equal(res.status, 401, res.body);
});

test('body_md5 not matching the body → 401', h.T, async () => {
  const res = await signedRequest({ path: '/events', body: event(h.uniq()), bodyMd5: crypto.createHash('md5').update('other').digest('hex') });
  assert.equal(res.status, 401, res.body);
});

test('disabled app: HTTP API → 403', h.T, async () => {
  const { status, body } = await h.httpError(h.server(h.APPS.disabled).trigger(h.uniq(), 'e', 'x'));
  assert.equal(status, 403, body);
});

test('disabled app: pusher-js gets error 4003 and does not connect', h.T, async () => {
  const pusher = h.client({ app: h.APPS.disabled });
  const states = h.record(pusher.connection, 'state_change');
  assert.equal(await h.connectionError(pusher, { code: 4003 }), 4003);
  await h.sleep(h.QUIET_MS);
  assert.ok(!states.some((s) => s.data.current === 'connected'), JSON.stringify(states.map((s) => s.data)));
});

test('unknown app key: pusher-js gets error 4001', h.T, async () => {
  const pusher = h.client({ key: 'no-such-app-key' });
  assert.equal(await h.connectionError(pusher, { code: 4001 }), 4001);
  assert.notEqual(pusher.connection.state, 'connected');
});

test('max_connections = 1: second pusher-js connection gets 4004; quota is released on disconnect', h.T, async () => {
  const app = h.APPS.single;
  const first = h.client({ app });
  await h.connected(first);
  const second = h.client({ app });
  assert.equal(await h.connectionError(second, { code: 4004 }), 4004);
  assert.equal(first.connection.state, 'connected', 'the existing connection must survive');
  h.closeClient(second);
  h.closeClient(first);
  await h.sleep(500);
  const third = h.client({ app });
  await h.connected(third);
});

test('raw: disabled app → close 4003; over quota → close 4004', h.T, async () => {
  const d = await h.RawSocket.open(`/app/${h.APPS.disabled.key}?protocol=7&client=js&version=8.6.0`);
  assert.equal((await d.waitClosed()).code, 4003);
  const first = await h.rawConnect(h.APPS.single);
  const over = await h.RawSocket.open(`/app/${h.APPS.single.key}?protocol=7&client=js&version=8.6.0`);
  assert.equal((await over.waitClosed()).code, 4004);
  assert.equal(first.ws.closed, null);
});
