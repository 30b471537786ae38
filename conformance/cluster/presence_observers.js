'use strict';
// Presence across a cluster, seen through the real pusher-js 8.6.0 client.
//
// Per round, on a fresh presence channel: three observers (one per node) subscribe at the same
// moment while churn users join through random nodes (some with a second tab on another node)
// and half of them leave again (disconnect or unsubscribe, random order, short random delays).
// Each observer keeps the view an app would build from pusher-js (Laravel Echo's here() /
// joining() / leaving()):
//   - `pusher:subscription_succeeded`: the members listed;
//   - `pusher:member_added` for a member already in the view: violation (a doubled join);
//   - a `pusher_internal:member_removed` for a member absent from the view: violation (pusher-js
//     swallows those, so they are checked on the raw frames of the observer's connection);
//   - any member event before the snapshot: violation.
// After the round settles (no presence frame for QUIET_MS and every view as expected, or a
// bound), each observer's final view and its `channel.members` are reported with the expected
// set (observers + users still connected) and its `pusher:member_added` count per member.
// A user's tabs leave only once all of its tabs are subscribed, so every user joins the
// channel at most once per round: no observer may count more than one member_added for it,
// and none for a member its snapshot lists.
//
// Output: ONE JSON line on stdout:
//   {"seed","rounds","violations":[...],"channels":[{"round","channel","expected"}],
//    "observers":[{"round","channel","node","user","snapshot","final","members","expected",
//                  "added_counts","removed_counts"}]}
// Exit 0 whatever it observed (the caller asserts); non-zero only when the script itself fails
// (bad arguments, a client that cannot connect, ...).
//
// Usage (from conformance/, after `npm ci`):
//   node cluster/presence_observers.js --ports 6001,6002,6003 --app-id ID --key KEY \
//        --secret SECRET [--host 127.0.0.1] [--channel presence-pjs] [--users 20] \
//        [--rounds 10] [--seed N] [--hold]
// Every option can also come from the environment: SOCKUDO_PORTS, SOCKUDO_APP_ID,
// SOCKUDO_APP_KEY, SOCKUDO_APP_SECRET, SOCKUDO_HOST, PRESENCE_CHANNEL, PRESENCE_USERS,
// PRESENCE_ROUNDS, PRESENCE_SEED, PRESENCE_HOLD=1.
// --hold: after the summary, keep every client connected (so the caller can query the HTTP
// API about the still-occupied channels) until stdin closes, then disconnect and exit.
// sockudo-testkit/tests/presence_pusher_js.rs runs it against a 3-node cluster.

const Pusher = require('pusher-js');
const PusherServer = require('pusher');

// Keep stdout for the summary line alone.
console.log = (...args) => console.error(...args);
if (process.env.PUSHER_DEBUG) Pusher.logToConsole = true;

const OBSERVERS_AT_MS = 30; // observers subscribe together, inside the churn's join window
const JOIN_SPREAD_MS = 100; // churn tabs subscribe at t0 + [0, JOIN_SPREAD_MS)
const LEAVE_SPREAD_MS = 150; // a leaving tab leaves [0, LEAVE_SPREAD_MS) after its user is in
const TWO_TABS = 0.4; // share of users with a second tab on another node
const QUIET_MS = 400; // no presence frame on any observer for this long = settled
const SETTLE_MAX_MS = 4000; // give up waiting for the views to match after this long
const STEP_TIMEOUT_MS = 8000; // connects, subscriptions, leaves

function parseArgs(argv) {
  const env = process.env;
  const opts = {
    host: env.SOCKUDO_HOST || '127.0.0.1',
    ports: env.SOCKUDO_PORTS,
    appId: env.SOCKUDO_APP_ID,
    key: env.SOCKUDO_APP_KEY,
    secret: env.SOCKUDO_APP_SECRET,
    channel: env.PRESENCE_CHANNEL || 'presence-pjs',
    users: env.PRESENCE_USERS || '20',
    rounds: env.PRESENCE_ROUNDS || '10',
    seed: env.PRESENCE_SEED,
    hold: env.PRESENCE_HOLD === '1',
  };
  const names = {
    '--host': 'host',
    '--ports': 'ports',
    '--app-id': 'appId',
    '--key': 'key',
    '--secret': 'secret',
    '--channel': 'channel',
    '--users': 'users',
    '--rounds': 'rounds',
    '--seed': 'seed',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--hold') {
      opts.hold = true;
    } else if (names[a] && i + 1 < argv.length) {
      opts[names[a]] = argv[++i];
    } else {
      throw new Error(`unknown or incomplete argument '${a}'`);
    }
  }
  for (const k of ['ports', 'appId', 'key', 'secret']) {
    if (!opts[k]) throw new Error(`missing ${k} (see the usage at the top of this file)`);
  }
  opts.ports = String(opts.ports).split(',').map(Number);
  if (opts.ports.length !== 3 || opts.ports.some((p) => !Number.isInteger(p) || p <= 0)) {
    throw new Error(`--ports needs three ports, got '${opts.ports}'`);
  }
  if (!opts.channel.startsWith('presence-')) throw new Error('--channel must start with presence-');
  opts.users = Number(opts.users);
  opts.rounds = Number(opts.rounds);
  opts.seed = opts.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : Number(opts.seed);
  for (const k of ['users', 'rounds', 'seed']) {
    if (!Number.isInteger(opts[k]) || opts[k] < 0) throw new Error(`--${k} must be an integer ≥ 0`);
  }
  return opts;
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sorted = (iterable) => [...iterable].sort();

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * The churn of one round, drawn from the seeded PRNG in a fixed order: users u0..u{n-1}, each
 * with one or two tabs (two tabs are on different nodes); half of the users (a random half)
 * leave with every tab, and some staying two-tab users close one of their tabs.
 */
function plan(rng, users) {
  const pick = (n) => Math.floor(rng() * n);
  const order = [...Array(users).keys()];
  for (let i = order.length - 1; i > 0; i--) {
    const j = pick(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const leavers = new Set(order.slice(0, Math.floor(users / 2)));
  const out = [];
  for (let u = 0; u < users; u++) {
    const first = pick(3);
    const nodes = rng() < TWO_TABS ? [first, (first + 1 + pick(2)) % 3] : [first];
    const oneTabLeaves = !leavers.has(u) && nodes.length === 2 && rng() < 0.5 ? pick(2) : -1;
    const tabs = nodes.map((node, t) => ({
      node,
      joinAt: pick(JOIN_SPREAD_MS),
      leave: leavers.has(u) || t === oneTabLeaves ? (rng() < 0.5 ? 'disconnect' : 'unsubscribe') : null,
      leaveDelay: pick(LEAVE_SPREAD_MS),
    }));
    out.push({ user: `u${u}`, stays: !leavers.has(u), tabs });
  }
  return out;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const sdk = new PusherServer({ appId: opts.appId, key: opts.key, secret: opts.secret, useTLS: false });
  const violations = [];
  const observersOut = [];
  const channelsOut = [];
  const live = []; // every client created, disconnected at the end
  const rng = prng(opts.seed);

  function client(node, userId) {
    const pusher = new Pusher(opts.key, {
      wsHost: opts.host,
      wsPort: opts.ports[node],
      forceTLS: false,
      enabledTransports: ['ws'],
      cluster: 'mt1',
      disableStats: true,
      channelAuthorization: {
        customHandler: (params, cb) => {
          try {
            cb(null, sdk.authorizeChannel(params.socketId, params.channelName, {
              user_id: userId,
              user_info: { name: userId },
            }));
          } catch (e) {
            cb(e, null);
          }
        },
      },
    });
    live.push(pusher);
    return pusher;
  }

  function connected(pusher, what) {
    if (pusher.connection.state === 'connected') return Promise.resolve();
    return withTimeout(
      new Promise((resolve, reject) => {
        pusher.connection.bind('state_change', ({ current }) => {
          if (current === 'connected') resolve();
          else if (current === 'failed' || current === 'unavailable') {
            reject(new Error(`${what}: connection went to '${current}'`));
          }
        });
      }),
      STEP_TIMEOUT_MS,
      `${what} to connect`,
    );
  }

  /** An observer: the app-level view from pusher-js events, and the raw frames to check removals. */
  function observer(round, channel, node, pusher) {
    const user = `obs-${node}`;
    const o = {
      round,
      channel,
      node,
      user,
      pusher,
      ch: null,
      view: null, // what the app knows: null before subscription_succeeded
      raw: null, // the same from the raw frames (pusher-js hides removals of absent members)
      snapshot: null,
      added: {},
      removed: {},
      frames: [], // [event, user_id] of the channel's frames, for violation reports
      violations: [],
      lastFrameAt: Date.now(),
    };
    // pusher-js handles a frame (and emits its app events) before this script's raw handler
    // records it, so an app-level violation is about the frame at index `frames.length`; the
    // member's frames are filled in when the round is reported (`>>` marks the offending one).
    const violation = (kind, member, at = o.frames.length) =>
      o.violations.push({ round, channel, node, observer: user, kind, member, snapshot: o.snapshot, at });
    pusher.connection.bind('message', (ev) => {
      if (ev.channel !== channel) return;
      o.lastFrameAt = Date.now();
      const id = ev.data && (ev.data.user_id ?? undefined);
      o.frames.push([ev.event, id]);
      switch (ev.event) {
        case 'pusher_internal:subscription_succeeded':
          o.raw = new Set(ev.data.presence.ids);
          break;
        case 'pusher_internal:member_added':
          if (o.raw) o.raw.add(id); // (before the snapshot: flagged below, from pusher-js's event)
          break;
        case 'pusher_internal:member_removed':
          if (!o.raw) violation('member_removed_before_snapshot', id, o.frames.length - 1);
          else if (!o.raw.delete(id)) violation('member_removed_while_absent', id, o.frames.length - 1);
          break;
        default:
      }
    });
    o.subscribe = () => {
      o.ch = pusher.subscribe(channel);
      o.ch.bind('pusher:subscription_succeeded', (members) => {
        const ids = [];
        members.each((m) => ids.push(m.id));
        o.snapshot = sorted(ids);
        o.view = new Set(ids);
      });
      o.ch.bind('pusher:subscription_error', (status) => {
        o.violations.push({ round, channel, node, observer: user, kind: 'subscription_error', status });
      });
      o.ch.bind('pusher:member_added', (m) => {
        o.added[m.id] = (o.added[m.id] || 0) + 1;
        if (!o.view) violation('member_added_before_snapshot', m.id);
        else if (o.view.has(m.id)) violation('member_added_while_present', m.id);
        else o.view.add(m.id);
      });
      o.ch.bind('pusher:member_removed', (m) => {
        o.removed[m.id] = (o.removed[m.id] || 0) + 1;
        if (!o.view || !o.view.delete(m.id)) violation('member_removed_while_absent', m.id);
      });
    };
    o.members = () => {
      const ids = [];
      if (o.ch) o.ch.members.each((m) => ids.push(m.id));
      return sorted(ids);
    };
    return o;
  }

  async function runRound(round) {
    const channel = `${opts.channel}-${opts.seed}-${round}`;
    const users = plan(rng, opts.users);
    const expected = sorted([
      ...[0, 1, 2].map((n) => `obs-${n}`),
      ...users.filter((u) => u.stays).map((u) => u.user),
    ]);
    const observers = [0, 1, 2].map((n) => observer(round, channel, n, client(n, `obs-${n}`)));
    const tabs = [];
    for (const u of users) {
      for (const t of u.tabs) tabs.push({ ...t, user: u, pusher: client(t.node, u.user), subscribed: false });
    }
    await Promise.all([
      ...observers.map((o) => connected(o.pusher, `observer ${o.node}`)),
      ...tabs.map((t) => connected(t.pusher, `${t.user.user} on node ${t.node}`)),
    ]);

    const actions = []; // resolves when every join and leave is done
    const at = (ms, fn) => new Promise((resolve) => setTimeout(() => resolve(fn()), ms));
    actions.push(at(OBSERVERS_AT_MS, () => observers.forEach((o) => o.subscribe())));
    for (const t of tabs) {
      actions.push(
        at(t.joinAt, () => {
          const ch = t.pusher.subscribe(channel);
          return withTimeout(
            new Promise((resolve, reject) => {
              ch.bind('pusher:subscription_succeeded', () => {
                t.subscribed = true;
                resolve();
              });
              ch.bind('pusher:subscription_error', (s) =>
                reject(new Error(`${t.user.user} on node ${t.node}: subscription_error ${JSON.stringify(s)}`)),
              );
            }),
            STEP_TIMEOUT_MS,
            `${t.user.user}'s subscription on node ${t.node}`,
          );
        }),
      );
    }
    // Leaves: once every tab of the user is in (so a user joins at most once per round).
    for (const u of users) {
      const mine = tabs.filter((t) => t.user === u);
      for (const t of mine.filter((x) => x.leave)) {
        actions.push(
          withTimeout(
            (async () => {
              while (!mine.every((x) => x.subscribed)) await sleep(5);
              await sleep(t.leaveDelay);
              if (t.leave === 'disconnect') t.pusher.disconnect();
              else t.pusher.unsubscribe(channel);
            })(),
            STEP_TIMEOUT_MS,
            `${u.user}'s leave`,
          ),
        );
      }
    }
    await Promise.all(actions);
    await withTimeout(
      (async () => {
        while (!observers.every((o) => o.view)) await sleep(5);
      })(),
      STEP_TIMEOUT_MS,
      'the observers subscriptions',
    );

    // Settle: quiet, and every view as expected (or the bound is reached).
    const want = JSON.stringify(expected);
    const deadline = Date.now() + SETTLE_MAX_MS;
    for (;;) {
      const quiet = observers.every((o) => Date.now() - o.lastFrameAt >= QUIET_MS);
      const match = observers.every(
        (o) => JSON.stringify(sorted(o.view)) === want && JSON.stringify(o.members()) === want,
      );
      if (quiet && (match || Date.now() > deadline)) break;
      await sleep(25);
    }

    channelsOut.push({ round, channel, expected });
    for (const o of observers) {
      for (const v of o.violations) {
        if (v.member !== undefined) {
          v.member_frames = o.frames
            .map(([e, id], i) => [i === v.at ? `>> ${e}` : e, id])
            .filter(([, id]) => id === v.member)
            .map(([e]) => e);
        }
        delete v.at;
        violations.push(v);
      }
      observersOut.push({
        round,
        channel,
        node: o.node,
        user: o.user,
        snapshot: o.snapshot,
        final: sorted(o.view),
        members: o.members(),
        raw_final: sorted(o.raw || []),
        expected,
        added_counts: o.added,
        removed_counts: o.removed,
      });
    }
    if (!opts.hold) {
      for (const p of [...observers.map((o) => o.pusher), ...tabs.map((t) => t.pusher)]) p.disconnect();
    }
  }

  return (async () => {
    for (let round = 0; round < opts.rounds; round++) await runRound(round);
    process.stdout.write(
      `${JSON.stringify({
        seed: opts.seed,
        rounds: opts.rounds,
        violations,
        channels: channelsOut,
        observers: observersOut,
      })}\n`,
    );
    if (opts.hold) {
      // Until the caller closes stdin (bounded, in case it never does).
      await withTimeout(
        new Promise((resolve) => {
          process.stdin.on('end', resolve);
          process.stdin.on('close', resolve);
          process.stdin.resume();
        }),
        60000,
        'stdin to close (--hold)',
      ).catch((e) => console.error(`presence_observers: ${e.message}`));
    }
    for (const p of live) p.disconnect();
    await sleep(200);
  })();
}

try {
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(`presence_observers: ${e && e.stack ? e.stack : e}`);
      process.exit(2);
    },
  );
} catch (e) {
  console.error(`presence_observers: ${e.message}`);
  process.exit(2);
}
