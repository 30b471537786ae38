//! `--mode resume-storm`: a V2 reconnect storm after a node crash.
//!
//! 1. Redis + `--nodes` (at least 2) nodes sharing it (adapter, cache, history); node A is
//!    node 0, node B node 1.
//! 2. K (`--connections`) protocol-2 clients on node A, client i subscribed to channel
//!    `{channel}-{i % C}` (C = `--storm-channels`), each remembering the `(stream_id, serial)`
//!    of its `subscription_succeeded` and every serial it receives.
//! 3. A steady stream (`--storm-rate`/s, round-robin over the channels) is published through
//!    node B's HTTP API for the whole run.
//! 4. Node A is SIGKILLed. Once every client saw its socket drop, M (`--storm-messages`) more
//!    messages are published through B as fast as 8 concurrent requests go (this is also the
//!    HTTP publish path's history-append rate with a Redis history store).
//! 5. All K clients reconnect to B at once (at most `--connect-concurrency` handshakes in
//!    flight), each sending `sockudo:subscribe` and, right behind it,
//!    `sockudo:resume {channel_positions: {ch: {serial, stream_id}}}` with the last serial up to
//!    which it holds every message. Time to `sockudo:resume_success` is measured from the moment
//!    the storm starts.
//! 6. One second after the last resume the stream stops; after `--drain` seconds a probe
//!    client reads every channel's head. Per client: expected = head − subscribe serial;
//!    lost = expected − distinct serials received; duplicates = frames − distinct, split into
//!    those that arrived before the client's `resume_success` (a live frame delivered between
//!    the new subscribe and the resume, then replayed: the V2 client gate drops it) and after
//!    it (must be 0).
//! 7. `RedisHistoryStore::append` in a loop with 4 concurrent tasks for `--history-secs`, on 4
//!    channels (one per task) and on 1 shared channel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use sockudo_core::history::{HistoryStore, RedisHistoryStore, Retention};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::api::Api;
use crate::cli::Args;
use crate::clock::Clock;
use crate::histogram::Histogram;
use crate::payload;
use crate::procs::{self, Proc};
use crate::report::Latency;
use crate::wsc::{self, Family};

fn progress(msg: &str) {
    eprintln!("[resume-storm] {msg}");
}

/// Serials one client received on its channel.
#[derive(Debug, Default)]
struct Track {
    channel: usize,
    stream_id: String,
    /// Serial at subscribe (`subscription_succeeded`).
    base: u64,
    /// Bit i: serial base + 1 + i received.
    bits: Vec<u64>,
    frames: u64,
    /// Frames with a serial ≤ base (published before the subscribe took effect).
    early: u64,
    dup_before_resume: u64,
    dup_after_resume: u64,
    /// First few serials duplicated after resume_success.
    dup_after_examples: Vec<u64>,
    resumed: bool,
}

impl Track {
    fn mark(&mut self, serial: u64) {
        self.frames += 1;
        if serial <= self.base {
            self.early += 1;
            return;
        }
        let i = (serial - self.base - 1) as usize;
        let (w, b) = (i / 64, i % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            if self.resumed {
                self.dup_after_resume += 1;
                if self.dup_after_examples.len() < 3 {
                    self.dup_after_examples.push(serial);
                }
            } else {
                self.dup_before_resume += 1;
            }
        } else {
            self.bits[w] |= 1 << b;
        }
    }

    /// Highest serial s with every serial in (base, s] received.
    fn contiguous(&self) -> u64 {
        let mut s = self.base;
        for w in &self.bits {
            if *w == u64::MAX {
                s += 64;
            } else {
                return s + u64::from(w.trailing_ones());
            }
        }
        s
    }

    /// The first serial in (base, head] never received.
    fn first_missing(&self, head: u64) -> Option<u64> {
        let c = self.contiguous();
        (c < head).then_some(c + 1)
    }

    /// Distinct serials received in (base, head].
    fn distinct_upto(&self, head: u64) -> u64 {
        let mut n = 0;
        for (w, word) in self.bits.iter().enumerate() {
            for b in 0..64 {
                let serial = self.base + 1 + (w * 64 + b) as u64;
                if serial > head {
                    return n;
                }
                if word & (1 << b) != 0 {
                    n += 1;
                }
            }
        }
        n
    }
}

/// How one client's resume went.
#[derive(Debug, Default)]
struct Outcome {
    track: Track,
    /// ns from storm start to `resume_success`.
    resumed_after_ns: Option<u64>,
    source: Option<String>,
    replayed: u64,
    /// `position.serial` of resume_success: replay and held frames cover up to here.
    position: Option<u64>,
    /// Serial the client resumed from.
    resumed_from: u64,
    failure: Option<String>,
}

#[derive(Debug)]
struct Shared {
    clock: Clock,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    disconnected: AtomicUsize,
    resumed: AtomicUsize,
    resume_failed: AtomicUsize,
    storm_start_ns: AtomicU64,
    last_resume_ns: AtomicU64,
    /// Connect → resume_success per client.
    resume_latency: Histogram,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        if let Ok(mut m) = self.errors.lock() {
            if m.len() < 20 || m.contains_key(&e) {
                *m.entry(e).or_default() += 1;
            }
        }
    }
}

/// Results.
#[derive(Debug, Serialize)]
pub struct StormReport {
    /// K.
    pub clients: usize,
    /// Subscribed on node A.
    pub subscribed: usize,
    /// Channels.
    pub channels: usize,
    /// Steady rate.
    pub steady_rate: f64,
    /// Messages published in the outage burst.
    pub burst_messages: u64,
    /// Burst publishes per second (HTTP path, Redis history append included).
    pub burst_rate: f64,
    /// Clients that saw their socket to A drop.
    pub disconnected: usize,
    /// ms from SIGKILL to the last client noticing.
    pub disconnect_ms: f64,
    /// Clients with resume_success (no failed channel).
    pub resumed: usize,
    /// Clients whose resume failed (or never answered).
    pub not_resumed: usize,
    /// ms from storm start to the last resume_success.
    pub storm_ms: f64,
    /// Per-client connect → resume_success.
    pub resume_latency_ms: Latency,
    /// Resume source → clients.
    pub sources: BTreeMap<String, u64>,
    /// Replayed messages, summed over clients.
    pub replayed_total: u64,
    /// Most replayed by one client.
    pub replayed_max: u64,
    /// Expected deliveries summed over resumed clients.
    pub expected: u64,
    /// Messages lost by clients that got resume_success (silent loss; must be 0).
    pub lost: u64,
    /// Resumed clients with any loss.
    pub clients_with_loss: usize,
    /// Channel index → (lost at resumed clients, first missing serial of up to 3 of them).
    pub lost_by_channel: BTreeMap<usize, (u64, Vec<u64>)>,
    /// Messages missing at clients whose resume failed closed (they were told).
    pub missed_after_failed_resume: u64,
    /// Duplicates before resume_success (dropped by the client gate), summed.
    pub dup_before_resume: u64,
    /// Duplicates after resume_success, summed (must be 0).
    pub dup_after_resume: u64,
    /// Clients with duplicates after resume_success.
    pub clients_with_dup_after: usize,
    /// Up to 5 examples: (resumed from, resume_success position, duplicated serials).
    pub dup_after_examples: Vec<(u64, Option<u64>, Vec<u64>)>,
    /// Steady + burst publishes answered 200 / not.
    pub published_ok: u64,
    /// Publishes not answered 200.
    pub published_failed: u64,
    /// Resume failure codes → clients.
    pub failures: BTreeMap<String, u64>,
    /// Client errors.
    pub errors: BTreeMap<String, u64>,
    /// Direct `RedisHistoryStore::append` loops: (label, appends/s, latency).
    pub history: Vec<HistoryRow>,
    /// 1-minute load average at the end.
    pub loadavg: String,
}

/// One direct append loop.
#[derive(Debug, Serialize)]
pub struct HistoryRow {
    /// What was measured.
    pub label: String,
    /// Appends committed.
    pub appends: u64,
    /// Appends per second.
    pub per_s: f64,
    /// Latency of one append.
    pub latency_ms: Latency,
    /// Errors.
    pub errors: u64,
}

/// Run the mode.
pub async fn run(args: &Args, clock: Clock) -> Result<String, String> {
    let dir = procs::scratch_dir()?;
    let bin = procs::sockudo_bin(args.sockudo_bin.as_deref())?;
    let redis = procs::start_redis(&dir).await?;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let env = procs::cluster_env(&redis_url);
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 0..args.nodes.max(2) {
        nodes.push(procs::start_node(&bin, &dir, &format!("node-{i}"), &env, None).await?);
    }
    progress(&format!(
        "redis on {}, {} nodes, logs in {}",
        redis.port,
        nodes.len(),
        dir.display()
    ));
    let url_a = wsc::url(&nodes[0].ws_base(), &args.key, Family::V2);
    let url_b = wsc::url(&nodes[1].ws_base(), &args.key, Family::V2);
    let http_b = nodes[1].http_url();
    let c = args.storm_channels.max(1);
    let channels: Arc<Vec<String>> =
        Arc::new((0..c).map(|i| format!("{}-{i}", args.channel)).collect());

    let shared = Arc::new(Shared {
        clock,
        subscribed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        resume_failed: AtomicUsize::new(0),
        storm_start_ns: AtomicU64::new(0),
        last_resume_ns: AtomicU64::new(0),
        resume_latency: Histogram::new(),
        errors: Mutex::new(BTreeMap::new()),
    });
    let k = args.connections;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let timeout = Duration::from_secs_f64(args.handshake_timeout);
    let t_connect = Instant::now();
    let clients: Vec<_> = (0..k)
        .map(|i| {
            let (shared, gate, channels, url_a, url_b, go, stop) = (
                shared.clone(),
                gate.clone(),
                channels.clone(),
                url_a.clone(),
                url_b.clone(),
                go_rx.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                client(
                    i, &channels, &url_a, &url_b, gate, timeout, shared, go, stop,
                )
                .await
            })
        })
        .collect();
    while shared.subscribed.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire) < k {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribed = shared.subscribed.load(Ordering::Acquire);
    progress(&format!(
        "{subscribed} of {k} V2 clients subscribed on node A in {:.2} s",
        t_connect.elapsed().as_secs_f64()
    ));

    // Steady stream through node B.
    let api = Api::new(&args.app_id, &args.key, &args.secret, 16);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let steady_stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (api, ok, bad, seq, stop, channels, http_b) = (
            api.clone(),
            ok.clone(),
            bad.clone(),
            seq.clone(),
            steady_stop.clone(),
            channels.clone(),
            http_b.clone(),
        );
        let rate = args.storm_rate.max(0.1);
        let payload_bytes = args.payload_bytes;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let data = payload::build_data(clock.now_ns(), n, payload_bytes);
                let ch = &channels[(n % channels.len() as u64) as usize];
                match api.publish(&http_b, ch, "bench", &data).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Crash node A.
    let t_kill = Instant::now();
    nodes[0].kill();
    progress("node A SIGKILLed");
    let deadline = Instant::now() + Duration::from_secs(15);
    while shared.disconnected.load(Ordering::Acquire) < subscribed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let disconnect_ms = t_kill.elapsed().as_secs_f64() * 1e3;
    let disconnected = shared.disconnected.load(Ordering::Acquire);
    progress(&format!(
        "{disconnected} clients disconnected within {disconnect_ms:.0} ms"
    ));

    // Burst of M messages while everyone is away.
    let t_burst = Instant::now();
    let burst_tasks: Vec<_> = (0..8u64)
        .map(|p| {
            let (api, ok, bad, seq, channels, http_b) = (
                api.clone(),
                ok.clone(),
                bad.clone(),
                seq.clone(),
                channels.clone(),
                http_b.clone(),
            );
            let m = args.storm_messages;
            let payload_bytes = args.payload_bytes;
            tokio::spawn(async move {
                let mut i = p;
                while i < m {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let data = payload::build_data(clock.now_ns(), n, payload_bytes);
                    let ch = &channels[(n % channels.len() as u64) as usize];
                    match api.publish(&http_b, ch, "bench", &data).await {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 8;
                }
            })
        })
        .collect();
    for t in burst_tasks {
        let _ = t.await;
    }
    let burst_s = t_burst.elapsed().as_secs_f64();
    let burst_rate = args.storm_messages as f64 / burst_s;
    progress(&format!(
        "published {} messages during the outage in {burst_s:.2} s ({burst_rate:.0}/s)",
        args.storm_messages
    ));

    // The storm.
    shared
        .storm_start_ns
        .store(clock.now_ns(), Ordering::Release);
    let t_storm = Instant::now();
    let _ = go_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last_print = Instant::now();
    while shared.resumed.load(Ordering::Acquire) + shared.resume_failed.load(Ordering::Acquire)
        < disconnected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            progress(&format!(
                "  {} resumed, {} failed",
                shared.resumed.load(Ordering::Relaxed),
                shared.resume_failed.load(Ordering::Relaxed)
            ));
        }
    }
    let storm_wall = t_storm.elapsed().as_secs_f64();
    let storm_start = shared.storm_start_ns.load(Ordering::Relaxed);
    let storm_ms = shared
        .last_resume_ns
        .load(Ordering::Relaxed)
        .saturating_sub(storm_start) as f64
        / 1e6;
    progress(&format!(
        "storm over after {storm_wall:.2} s: {} resumed, {} failed; last resume_success at {storm_ms:.0} ms",
        shared.resumed.load(Ordering::Relaxed),
        shared.resume_failed.load(Ordering::Relaxed)
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    steady_stop.store(true, Ordering::Relaxed);
    let _ = steady.await;
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;

    // Channel heads, via a probe client on B.
    let mut heads = Vec::with_capacity(c);
    {
        let (mut ws, _) = wsc::connect(&url_b, Family::V2).await?;
        for ch in channels.iter() {
            let d = wsc::subscribe(&mut ws, Family::V2, ch, None).await?;
            heads.push(d.get("serial").and_then(Value::as_u64).unwrap_or(0));
        }
        let _ = ws.close(None).await;
    }
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(k);
    for h in clients {
        if let Ok(Some(o)) = h.await {
            outcomes.push(o);
        }
    }

    let mut r = StormReport {
        clients: k,
        subscribed,
        channels: c,
        steady_rate: args.storm_rate,
        burst_messages: args.storm_messages,
        burst_rate,
        disconnected,
        disconnect_ms,
        resumed: 0,
        not_resumed: 0,
        storm_ms,
        resume_latency_ms: Latency::from_ns(&shared.resume_latency.snapshot()),
        sources: BTreeMap::new(),
        replayed_total: 0,
        replayed_max: 0,
        expected: 0,
        lost: 0,
        clients_with_loss: 0,
        missed_after_failed_resume: 0,
        lost_by_channel: BTreeMap::new(),
        dup_before_resume: 0,
        dup_after_resume: 0,
        clients_with_dup_after: 0,
        dup_after_examples: Vec::new(),
        published_ok: ok.load(Ordering::Relaxed),
        published_failed: bad.load(Ordering::Relaxed),
        failures: BTreeMap::new(),
        errors: shared.errors.lock().map(|m| m.clone()).unwrap_or_default(),
        history: Vec::new(),
        loadavg: procs::loadavg(),
    };
    for o in &outcomes {
        let head = heads.get(o.track.channel).copied().unwrap_or(0);
        let expected = head.saturating_sub(o.track.base);
        let distinct = o.track.distinct_upto(head);
        let lost = expected.saturating_sub(distinct);
        let recovered = o.resumed_after_ns.is_some() && o.failure.is_none();
        if recovered {
            r.expected += expected;
            r.lost += lost;
            if lost > 0 {
                r.clients_with_loss += 1;
                let e = r.lost_by_channel.entry(o.track.channel).or_default();
                e.0 += lost;
                if e.1.len() < 3 {
                    e.1.extend(o.track.first_missing(head));
                }
            }
        } else {
            // Failed closed: the client was told (resume_failed) and must refetch; not a
            // silent loss.
            r.missed_after_failed_resume += lost;
        }
        r.dup_before_resume += o.track.dup_before_resume;
        r.dup_after_resume += o.track.dup_after_resume;
        if o.track.dup_after_resume > 0 {
            r.clients_with_dup_after += 1;
            if r.dup_after_examples.len() < 5 {
                r.dup_after_examples.push((
                    o.resumed_from,
                    o.position,
                    o.track.dup_after_examples.clone(),
                ));
            }
        }
        if o.resumed_after_ns.is_some() && o.failure.is_none() {
            r.resumed += 1;
        } else {
            r.not_resumed += 1;
        }
        if let Some(s) = &o.source {
            *r.sources.entry(s.clone()).or_default() += 1;
        }
        if let Some(f) = &o.failure {
            *r.failures.entry(f.clone()).or_default() += 1;
        }
        r.replayed_total += o.replayed;
        r.replayed_max = r.replayed_max.max(o.replayed);
    }
    drop(nodes);

    if args.history_secs > 0.0 {
        r.history
            .push(history_loop(&redis_url, "4 tasks, 4 channels", 4, args).await?);
        r.history
            .push(history_loop(&redis_url, "4 tasks, 1 channel", 1, args).await?);
    }
    drop(redis);
    if args.json {
        return serde_json::to_string_pretty(&r).map_err(|e| e.to_string());
    }
    Ok(table(&r))
}

fn table(r: &StormReport) -> String {
    let mut s = format!(
        "resume-storm: {} V2 clients ({} subscribed on node A) over {} channels, steady {:.0} msg/s through node B\n\n",
        r.clients, r.subscribed, r.channels, r.steady_rate
    );
    s.push_str("| metric | value |\n|---|---:|\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "clients disconnected by SIGKILL of A",
            format!(
                "{} (last noticed after {:.0} ms)",
                r.disconnected, r.disconnect_ms
            ),
        ),
        (
            "messages published while away (M)",
            format!(
                "{} at {:.0}/s (HTTP publish, Redis history)",
                r.burst_messages, r.burst_rate
            ),
        ),
        (
            "resumed (resume_success, no failed channel)",
            format!("{}", r.resumed),
        ),
        ("not resumed", format!("{}", r.not_resumed)),
        (
            "storm start → last resume_success",
            format!("{:.0} ms", r.storm_ms),
        ),
        (
            "per-client connect → resume_success p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                r.resume_latency_ms.p50, r.resume_latency_ms.p99, r.resume_latency_ms.max
            ),
        ),
        ("resume source (clients)", format!("{:?}", r.sources)),
        (
            "replayed messages total / max per client",
            format!("{} / {}", r.replayed_total, r.replayed_max),
        ),
        (
            "expected deliveries, resumed clients (Σ head − subscribe serial)",
            format!("{}", r.expected),
        ),
        (
            "lost at resumed clients (clients with loss)",
            format!("{} ({})", r.lost, r.clients_with_loss),
        ),
        (
            "lost at resumed clients by channel: (lost, first missing serials)",
            format!("{:?}", r.lost_by_channel),
        ),
        (
            "missing at clients whose resume failed closed (told via resume_failed)",
            format!("{}", r.missed_after_failed_resume),
        ),
        (
            "duplicates after resume_success (clients)",
            format!("{} ({})", r.dup_after_resume, r.clients_with_dup_after),
        ),
        (
            "duplicates after resume_success: examples (resumed from, success position, serials)",
            format!("{:?}", r.dup_after_examples),
        ),
        (
            "duplicates before resume_success (live frame then replay; client gate drops)",
            format!("{}", r.dup_before_resume),
        ),
        (
            "publishes 200 / failed",
            format!("{} / {}", r.published_ok, r.published_failed),
        ),
        ("resume failures", format!("{:?}", r.failures)),
        ("client errors", format!("{:?}", r.errors)),
        ("load average (1 min) at the end", r.loadavg.clone()),
    ];
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    if !r.history.is_empty() {
        s.push_str("\n| RedisHistoryStore::append loop | appends | appends/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|\n");
        for h in &r.history {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
                h.label, h.appends, h.per_s, h.latency_ms.p50, h.latency_ms.p99, h.errors
            ));
        }
    }
    s
}

/// `tasks` = 4 appenders for `--history-secs` on `channels` channels (task t on `t % channels`).
async fn history_loop(
    redis_url: &str,
    label: &str,
    channels: usize,
    args: &Args,
) -> Result<HistoryRow, String> {
    let prefix = format!("bench-hist-{}-{channels}:", std::process::id());
    let store = Arc::new(
        RedisHistoryStore::connect(
            redis_url,
            &prefix,
            Retention::default(),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| format!("history store: {e}"))?,
    );
    let lat = Arc::new(Histogram::new());
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(args.payload_bytes);
    let end = Instant::now() + Duration::from_secs_f64(args.history_secs);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..4usize)
        .map(|t| {
            let (store, lat, count, errors, pad) = (store.clone(), lat.clone(), count.clone(), errors.clone(), pad.clone());
            let channel = format!("hist-{}", t % channels.max(1));
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let id = format!("t{t}-{n}");
                    let frame_for = |sid: &str, serial: u64| {
                        Bytes::from(format!(
                            r#"{{"event":"bench","channel":"{channel}","data":"{pad}","message_id":"{id}","serial":{serial},"stream_id":"{sid}"}}"#
                        ))
                    };
                    let s = Instant::now();
                    match store.append("app-id", &channel, &id, Duration::from_secs(120), &frame_for).await {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            lat.record(u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let appends = count.load(Ordering::Relaxed);
    let row = HistoryRow {
        label: label.to_string(),
        appends,
        per_s: appends as f64 / secs,
        latency_ms: Latency::from_ns(&lat.snapshot()),
        errors: errors.load(Ordering::Relaxed),
    };
    progress(&format!(
        "history append, {label}: {appends} in {secs:.1} s = {:.0}/s",
        row.per_s
    ));
    Ok(row)
}

#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    channels: &[String],
    url_a: &str,
    url_b: &str,
    gate: Arc<Semaphore>,
    timeout: Duration,
    shared: Arc<Shared>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<Outcome> {
    let ch_idx = i % channels.len();
    let channel = &channels[ch_idx];
    let family = Family::V2;
    let ping = format!("{}ping", family.prefix());

    // Phase 1: subscribe on node A.
    let permit = gate.clone().acquire_owned().await.ok()?;
    let setup = tokio::time::timeout(timeout, async {
        let (mut ws, _) = wsc::connect(url_a, family).await?;
        let data = wsc::subscribe(&mut ws, family, channel, None).await?;
        Ok::<_, String>((ws, data))
    })
    .await;
    drop(permit);
    let (mut ws, data) = match setup {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared.note_error(e);
            shared.failed.fetch_add(1, Ordering::Release);
            return None;
        }
        Err(_) => {
            shared.note_error("subscribe on A timed out".into());
            shared.failed.fetch_add(1, Ordering::Release);
            return None;
        }
    };
    let mut out = Outcome {
        track: Track {
            channel: ch_idx,
            stream_id: data
                .get("stream_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            base: data.get("serial").and_then(Value::as_u64).unwrap_or(0),
            ..Track::default()
        },
        ..Outcome::default()
    };
    shared.subscribed.fetch_add(1, Ordering::Release);

    // Receive until node A dies.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Some(serial) = wsc::u64_after(&text, "serial") {
                    if text.contains("\"event\":\"bench\"") {
                        out.track.mark(serial);
                    }
                } else if text.contains(&ping)
                    && ws.send(Message::text(family.pong())).await.is_err()
                {
                    break;
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    drop(ws);
    shared.disconnected.fetch_add(1, Ordering::Release);

    // Phase 2: wait for the storm, then reconnect to B and resume.
    while !*go.borrow() {
        if go.changed().await.is_err() {
            return Some(out);
        }
    }
    let permit = gate.acquire_owned().await.ok()?;
    let started = Instant::now();
    let position = out.track.contiguous();
    out.resumed_from = position;
    let resume = serde_json::json!({
        "event": "sockudo:resume",
        "data": { "channel_positions": { channel.as_str(): { "serial": position, "stream_id": out.track.stream_id } } }
    })
    .to_string();
    let conn = tokio::time::timeout(timeout, async {
        let (mut ws, _) = wsc::connect(url_b, family).await?;
        ws.send(Message::text(wsc::subscribe_frame(family, channel, None)))
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
        ws.send(Message::text(resume))
            .await
            .map_err(|e| format!("send resume: {e}"))?;
        Ok::<_, String>(ws)
    })
    .await;
    drop(permit);
    let mut ws = match conn {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.note_error(format!("reconnect: {e}"));
            shared.resume_failed.fetch_add(1, Ordering::Release);
            out.failure = Some("reconnect failed".into());
            return Some(out);
        }
        Err(_) => {
            shared.note_error("reconnect timed out".into());
            shared.resume_failed.fetch_add(1, Ordering::Release);
            out.failure = Some("reconnect timed out".into());
            return Some(out);
        }
    };
    let mut answered = false;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"event\":\"bench\"") {
                        if let Some(serial) = wsc::u64_after(&text, "serial") {
                            out.track.mark(serial);
                        }
                        continue;
                    }
                    let Some((event, _, data)) = wsc::parse(&text) else { continue };
                    match event.as_str() {
                        "sockudo:resume_success" => {
                            let now = shared.clock.now_ns();
                            out.track.resumed = true;
                            out.resumed_after_ns = Some(now.saturating_sub(shared.storm_start_ns.load(Ordering::Relaxed)));
                            shared.resume_latency.record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
                            if let Some(rec) = data.get("recovered").and_then(Value::as_array).and_then(|a| a.first()) {
                                out.source = rec.get("source").and_then(Value::as_str).map(str::to_string);
                                out.replayed = rec.get("replayed").and_then(Value::as_u64).unwrap_or(0);
                                out.position = rec.get("position").and_then(|p| p.get("serial")).and_then(Value::as_u64);
                            }
                            if let Some(f) = data.get("failed").and_then(Value::as_array).and_then(|a| a.first()) {
                                out.failure = Some(f.get("code").and_then(Value::as_str).unwrap_or("failed").to_string());
                            }
                            if !answered {
                                answered = true;
                                if out.failure.is_some() {
                                    shared.resume_failed.fetch_add(1, Ordering::Release);
                                } else {
                                    shared.resumed.fetch_add(1, Ordering::Release);
                                    shared.last_resume_ns.fetch_max(now, Ordering::Relaxed);
                                }
                            }
                        }
                        "sockudo:resume_failed" => {
                            out.failure = Some(data.get("code").and_then(Value::as_str).unwrap_or("resume_failed").to_string());
                        }
                        "sockudo:error" => shared.note_error(format!("sockudo:error {data}")),
                        e if e == ping => {
                            let _ = ws.send(Message::text(family.pong())).await;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    shared.note_error("connection to B ended".into());
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    if !answered {
        shared.resume_failed.fetch_add(1, Ordering::Release);
        out.failure.get_or_insert_with(|| "no resume answer".into());
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_counts_gaps_and_duplicates() {
        let mut t = Track {
            base: 10,
            ..Track::default()
        };
        for s in [11, 12, 13, 15, 13, 9] {
            t.mark(s);
        }
        assert_eq!(t.contiguous(), 13);
        assert_eq!(t.distinct_upto(15), 4);
        assert_eq!(t.dup_before_resume, 1);
        assert_eq!(t.early, 1);
        t.resumed = true;
        t.mark(14);
        t.mark(14);
        assert_eq!(t.contiguous(), 15);
        assert_eq!(t.dup_after_resume, 1);
        for s in 16..=200 {
            t.mark(s);
        }
        assert_eq!(t.contiguous(), 200);
        assert_eq!(t.distinct_upto(300), 190);
    }
}
