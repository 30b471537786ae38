'use strict';
// The README's mount recipe seen by the official SDKs, unmodified: pusher-js 8.6.0 connects
// through the prefix (`wsPath: '/realtime'`) and subscribes; the `pusher` 5.3.4 Node SDK,
// which has no path option, is given only host and port and publishes; pusher-js must
// receive the event. Run by examples/axum-mount/tests/pusher_sdks.rs.
//
//   node mount/sdk_publish.js PORT APP_ID KEY SECRET CHANNEL
// stdout: one JSON line {"trigger_status","channel_info","received"}; exit 0 when the event
// arrived, 1 (with the reason on stderr) otherwise.

const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

console.log = (...args) => console.error(...args);
const [port, appId, key, secret, channel] = process.argv.slice(2);
const EVENT = 'sdk-event';
const DATA = { hello: 'mount', n: 1 };

function fail(reason) {
  console.error(`sdk_publish: ${reason}`);
  process.exit(1);
}

const limit = setTimeout(() => fail('no event within 20 s'), 20000);

const client = new PusherClient(key, {
  wsHost: '127.0.0.1',
  wsPort: Number(port),
  wsPath: '/realtime',
  forceTLS: false,
  enabledTransports: ['ws'],
  cluster: 'mt1',
  disableStats: true,
});
client.connection.bind('error', (e) => console.error('pusher-js error', JSON.stringify(e)));

const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port, useTLS: false });

const ch = client.subscribe(channel);
let triggerStatus;
let channelInfo;
let received;
// The event may arrive before the SDK has read the HTTP answer: finish once both are in.
function finish() {
  if (received === undefined || triggerStatus === undefined) return;
  clearTimeout(limit);
  process.stdout.write(JSON.stringify({ trigger_status: triggerStatus, channel_info: channelInfo, received }) + '\n');
  client.disconnect();
  process.exit(0);
}
ch.bind('pusher:subscription_error', (s) => fail(`subscription_error ${JSON.stringify(s)}`));
ch.bind('pusher:subscription_succeeded', async () => {
  try {
    const info = await server.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } });
    channelInfo = await info.json();
    const res = await server.trigger(channel, EVENT, DATA);
    triggerStatus = res.status;
    finish();
  } catch (e) {
    fail(`the pusher SDK failed: ${e.status || ''} ${e.body || e.message}`);
  }
});
ch.bind(EVENT, (data) => {
  received = data;
  finish();
});
