//! `--mode cluster-fanout`: N protocol-7 subscribers spread over several `sockudo` nodes that
//! share one Redis (cache, history; the adapter too unless `--adapter` names another, see
//! [`crate::adapters`]), one channel, signed HTTP publishes sent to the
//! nodes round-robin at rising rates. Per rate step: deliveries/s, publish → receipt latency
//! percentiles and loss; the run stops at the knee (p99 above `--knee-p99-ms`, or any loss).
//!
//! Every step has its own window on the send timestamp carried in the payload, so a delivery
//! is charged to the step its publish belonged to, whenever it arrives. After a step's
//! publishers finish, the clients get `--drain` seconds to catch up before the next step.
//! Expected deliveries of a step = its 200-answered publishes × subscribed clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::adapters::{self, AdapterBroker};
use crate::api::Api;
use crate::cli::Args;
use crate::clock::Clock;
use crate::histogram::Histogram;
use crate::payload;
use crate::procs::{self, Proc};
use crate::report::Latency;
use crate::wsc::{self, Family};

const NS: f64 = 1e9;

fn progress(msg: &str) {
    eprintln!("[cluster-fanout] {msg}");
}

/// One rate step's delivery counters, filled by the clients.
#[derive(Debug)]
struct Slot {
    start_ns: AtomicU64,
    received: AtomicU64,
    latency: Histogram,
}

#[derive(Debug)]
struct Stats {
    clock: Clock,
    slots: Vec<Slot>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicU64,
    received_total: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn note_error(&self, e: String) {
        if let Ok(mut m) = self.errors.lock() {
            if m.len() < 20 || m.contains_key(&e) {
                *m.entry(e).or_default() += 1;
            }
        }
    }

    fn record(&self, sent_ns: u64, now_ns: u64) {
        self.received_total.fetch_add(1, Ordering::Relaxed);
        // Steps run one after another: a publish belongs to the latest step started before
        // it was sent (a late publisher may send after its step's nominal end).
        for s in self.slots.iter().rev() {
            if sent_ns >= s.start_ns.load(Ordering::Relaxed) {
                s.received.fetch_add(1, Ordering::Relaxed);
                s.latency.record(now_ns.saturating_sub(sent_ns));
                return;
            }
        }
    }
}

/// One row of the result table.
#[derive(Debug, Serialize)]
pub struct StepRow {
    /// Target publishes per second (all nodes together).
    pub rate: f64,
    /// Publishes sent / answered 200 / other.
    pub sent: u64,
    /// 200-answered publishes.
    pub ok: u64,
    /// Non-200 answers and transport errors.
    pub failed: u64,
    /// Achieved publish rate.
    pub achieved_rate: f64,
    /// ok × subscribers.
    pub expected: u64,
    /// Deliveries of this step's publishes.
    pub received: u64,
    /// received / max(step seconds, first due → last send).
    pub deliveries_per_s: f64,
    /// expected − received.
    pub lost: u64,
    /// Publish → receipt latency.
    pub latency_ms: Latency,
    /// HTTP publish request latency.
    pub http_ms: Latency,
    /// CPU used by all nodes during the step, in percent of one core.
    pub nodes_cpu_pct: Option<f64>,
    /// CPU used by the shared redis-server (cache, history, presence), percent of one core.
    pub redis_cpu_pct: Option<f64>,
    /// CPU used by the adapter's broker (its whole process tree; none for `redis`), percent
    /// of one core.
    pub broker_cpu_pct: Option<f64>,
    /// CPU used by this tool, percent of one core.
    pub bench_cpu_pct: Option<f64>,
    /// 1-minute load average at the end of the step.
    pub loadavg: String,
    /// Whether this step is past the knee.
    pub knee: bool,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// Nodes used (HTTP bases).
    pub nodes: Vec<String>,
    /// Subscribers requested / subscribed / failed.
    pub connections: usize,
    /// Subscribed clients.
    pub subscribed: usize,
    /// Clients that failed to subscribe.
    pub failed: usize,
    /// Seconds to connect + subscribe everyone.
    pub connect_s: f64,
    /// Seconds per rate step.
    pub step_s: f64,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Rows, one per rate step run.
    pub steps: Vec<StepRow>,
    /// Connections lost during the run.
    pub dropped: u64,
    /// Client errors.
    pub errors: BTreeMap<String, u64>,
}

fn cpu_sum(pids: &[u32]) -> Option<f64> {
    let mut t = 0.0;
    for p in pids {
        t += procs::cpu_secs(*p)?;
    }
    Some(t)
}

/// CPU seconds of the process trees rooted at `roots`; `None` when there are none.
fn tree_cpu_sum(roots: &[u32]) -> Option<f64> {
    if roots.is_empty() {
        return None;
    }
    Some(roots.iter().map(|&r| procs::tree_cpu_secs(r)).sum())
}

/// Run the mode; returns the report text (table or JSON).
pub async fn run(args: &Args, clock: Clock) -> Result<String, String> {
    let rates = args.rate_list()?;
    let dir = procs::scratch_dir()?;
    // Start (or attach to) the cluster.
    let mut _redis: Option<Proc> = None;
    let mut broker: Option<AdapterBroker> = None;
    let mut nodes: Vec<Proc> = Vec::new();
    let (http_bases, ws_bases): (Vec<String>, Vec<String>) = if !args.node_urls.is_empty() {
        let http: Vec<String> = args
            .node_urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        let ws = http
            .iter()
            .map(|u| u.replacen("http://", "ws://", 1))
            .collect();
        (http, ws)
    } else {
        let bin = procs::sockudo_bin(args.sockudo_bin.as_deref())?;
        let redis = procs::start_redis(&dir).await?;
        let mut env = procs::cluster_env(&format!("redis://127.0.0.1:{}", redis.port));
        let adapter = adapters::start(&args.adapter, &dir).await?;
        adapter.apply(&mut env);
        for i in 0..args.nodes.max(1) {
            nodes.push(procs::start_node(&bin, &dir, &format!("node-{i}"), &env, None).await?);
        }
        progress(&format!(
            "started redis on {}, {} for the {} adapter, and {} nodes ({}), logs in {}",
            redis.port,
            adapter.what,
            args.adapter,
            nodes.len(),
            bin.display(),
            dir.display()
        ));
        _redis = Some(redis);
        broker = Some(adapter);
        (
            nodes.iter().map(Proc::http_url).collect(),
            nodes.iter().map(Proc::ws_base).collect(),
        )
    };
    let node_pids: Vec<u32> = nodes.iter().filter_map(Proc::pid).collect();
    let redis_pid: Vec<u32> = _redis.iter().filter_map(Proc::pid).collect();
    let broker_pids: Vec<u32> = broker.iter().flat_map(|b| b.pids.clone()).collect();
    let self_pid = [std::process::id()];

    let stats = Arc::new(Stats {
        clock,
        slots: rates
            .iter()
            .map(|_| Slot {
                start_ns: AtomicU64::new(u64::MAX),
                received: AtomicU64::new(0),
                latency: Histogram::new(),
            })
            .collect(),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        received_total: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });

    // Connect N subscribers, client i on node i % nodes.
    let n = args.connections;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let urls: Arc<Vec<String>> = Arc::new(
        ws_bases
            .iter()
            .map(|b| wsc::url(b, &args.key, Family::V1))
            .collect(),
    );
    let channel = args.channel.clone();
    let timeout = Duration::from_secs_f64(args.handshake_timeout);
    let t0 = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (stats, gate, urls, channel, stop) = (
                stats.clone(),
                gate.clone(),
                urls.clone(),
                channel.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let url = &urls[i % urls.len()];
                client(url, &channel, gate, timeout, stats, stop).await;
            })
        })
        .collect();
    while stats.connected.load(Ordering::Acquire) + stats.failed.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let subscribed = stats.connected.load(Ordering::Acquire);
    let failed = stats.failed.load(Ordering::Acquire);
    progress(&format!(
        "{subscribed} subscribed, {failed} failed over {} nodes in {connect_s:.2} s",
        http_bases.len()
    ));
    if subscribed == 0 {
        return Err(format!(
            "no client subscribed: {:?}",
            stats.errors.lock().map(|m| m.clone()).unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let api = Api::new(&args.app_id, &args.key, &args.secret, args.publishers);
    let bases = Arc::new(http_bases.clone());
    let mut rows = Vec::new();
    for (k, rate) in rates.iter().copied().enumerate() {
        let slot = &stats.slots[k];
        let start_ns = clock.now_ns() + 50_000_000;
        let end_ns = start_ns + (args.step_secs * NS) as u64;
        slot.start_ns.store(start_ns, Ordering::Release);
        let cpu_nodes0 = cpu_sum(&node_pids);
        let cpu_redis0 = cpu_sum(&redis_pid);
        let cpu_broker0 = tree_cpu_sum(&broker_pids);
        let cpu_self0 = cpu_sum(&self_pid);
        let wall0 = Instant::now();

        let sent = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let first = Arc::new(AtomicU64::new(u64::MAX));
        let last = Arc::new(AtomicU64::new(0));
        let http = Arc::new(Histogram::new());
        let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let p_count = args.publishers.max(1);
        let tasks: Vec<_> = (0..p_count)
            .map(|p| {
                let (api, bases, channel) = (api.clone(), bases.clone(), args.channel.clone());
                let (sent, ok, bad, first, last, http, errors) = (
                    sent.clone(),
                    ok.clone(),
                    bad.clone(),
                    first.clone(),
                    last.clone(),
                    http.clone(),
                    errors.clone(),
                );
                let payload_bytes = args.payload_bytes;
                tokio::spawn(async move {
                    let interval = NS / rate;
                    let mut i = p as u64;
                    loop {
                        let due = start_ns + (i as f64 * interval) as u64;
                        if due >= end_ns {
                            break;
                        }
                        tokio::time::sleep_until(clock.at(due)).await;
                        let base = &bases[(i % bases.len() as u64) as usize];
                        let now = clock.now_ns();
                        let data = payload::build_data(now, i, payload_bytes);
                        sent.fetch_add(1, Ordering::Relaxed);
                        first.fetch_min(now, Ordering::Relaxed);
                        last.fetch_max(now, Ordering::Relaxed);
                        let t = Instant::now();
                        match api.publish(base, &channel, "bench", &data).await {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                http.record(
                                    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
                                );
                            }
                            Ok((s, body)) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                let msg: String =
                                    String::from_utf8_lossy(&body).chars().take(120).collect();
                                if let Ok(mut m) = errors.lock() {
                                    *m.entry(format!("HTTP {s}: {msg}")).or_default() += 1;
                                }
                            }
                            Err(e) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut m) = errors.lock() {
                                    *m.entry(e).or_default() += 1;
                                }
                            }
                        }
                        i += p_count as u64;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let subs = stats.connected.load(Ordering::Relaxed) as u64;
        let ok_n = ok.load(Ordering::Relaxed);
        let expected = ok_n * subs;
        let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
        while slot.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = wall0.elapsed().as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some((b - a) * 100.0 / wall),
            _ => None,
        };
        let received = slot.received.load(Ordering::Relaxed);
        let lost = expected.saturating_sub(received);
        let latency = Latency::from_ns(&slot.latency.snapshot());
        let sent_n = sent.load(Ordering::Relaxed);
        let (f, l) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
        let achieved = if sent_n > 1 && l > f {
            (sent_n - 1) as f64 * NS / (l - f) as f64
        } else {
            0.0
        };
        // Past the knee: loss, p99 over the limit, failed publishes, or publishers that could
        // not keep the asked rate (the HTTP path saturated first).
        let knee = lost > 0
            || latency.p99 > args.knee_p99_ms
            || bad.load(Ordering::Relaxed) > 0
            || achieved < 0.9 * rate;
        let row = StepRow {
            rate,
            sent: sent_n,
            ok: ok_n,
            failed: bad.load(Ordering::Relaxed),
            achieved_rate: achieved,
            expected,
            received,
            // Over the real publishing span: late publishers stretch a step past its length.
            deliveries_per_s: received as f64
                / args.step_secs.max(l.saturating_sub(start_ns) as f64 / NS),
            lost,
            latency_ms: latency,
            http_ms: Latency::from_ns(&http.snapshot()),
            nodes_cpu_pct: pct(cpu_nodes0, cpu_sum(&node_pids)),
            redis_cpu_pct: pct(cpu_redis0, cpu_sum(&redis_pid)),
            broker_cpu_pct: pct(cpu_broker0, tree_cpu_sum(&broker_pids)),
            bench_cpu_pct: pct(cpu_self0, cpu_sum(&self_pid)),
            loadavg: procs::loadavg(),
            knee,
        };
        progress(&format!(
            "rate {rate}/s: {received}/{expected} delivered ({:.0}/s), p50 {:.1} ms p99 {:.1} ms, lost {lost}{}",
            row.deliveries_per_s,
            row.latency_ms.p50,
            row.latency_ms.p99,
            if knee { " — knee" } else { "" }
        ));
        if let Ok(m) = errors.lock() {
            for (e, c) in m.iter() {
                progress(&format!("  publish error x{c}: {e}"));
            }
        }
        rows.push(row);
        if knee {
            break;
        }
    }

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for c in clients {
            let _ = c.await;
        }
    })
    .await;
    let report = FanoutReport {
        nodes: http_bases,
        connections: n,
        subscribed,
        failed,
        connect_s,
        step_s: args.step_secs,
        payload_bytes: args.payload_bytes,
        steps: rows,
        dropped: stats.dropped.load(Ordering::Relaxed),
        errors: stats.errors.lock().map(|m| m.clone()).unwrap_or_default(),
    };
    if args.json {
        return serde_json::to_string_pretty(&report).map_err(|e| e.to_string());
    }
    Ok(table(&report))
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

fn table(r: &FanoutReport) -> String {
    let mut s = format!(
        "cluster-fanout: {} nodes, {} subscribers ({} subscribed, {} failed, {:.2} s to subscribe), 1 channel, {} B payload, {:.0} s per step\n\n",
        r.nodes.len(),
        r.connections,
        r.subscribed,
        r.failed,
        r.connect_s,
        r.payload_bytes,
        r.step_s
    );
    s.push_str("| rate/s | achieved/s | published ok | deliveries | deliveries/s | p50 ms | p99 ms | max ms | lost | HTTP p99 ms | nodes CPU % | redis CPU % | broker CPU % | bench CPU % | load |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.steps {
        s.push_str(&format!(
            "| {:.0}{} | {:.0} | {} | {}/{} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
            row.rate,
            if row.knee { " (knee)" } else { "" },
            row.achieved_rate,
            row.ok,
            row.received,
            row.expected,
            row.deliveries_per_s,
            row.latency_ms.p50,
            row.latency_ms.p99,
            row.latency_ms.max,
            row.lost,
            row.http_ms.p99,
            opt(row.nodes_cpu_pct),
            opt(row.redis_cpu_pct),
            opt(row.broker_cpu_pct),
            opt(row.bench_cpu_pct),
            row.loadavg
        ));
    }
    s.push_str(&format!(
        "\nconnections dropped during the run: {}; client errors: {:?}\n",
        r.dropped, r.errors
    ));
    s
}

async fn client(
    url: &str,
    channel: &str,
    gate: Arc<Semaphore>,
    timeout: Duration,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(permit) = gate.acquire_owned().await else {
        stats.failed.fetch_add(1, Ordering::Release);
        return;
    };
    let setup = tokio::time::timeout(timeout, async {
        let (mut ws, _) = wsc::connect(url, Family::V1).await?;
        wsc::subscribe(&mut ws, Family::V1, channel, None).await?;
        Ok::<_, String>(ws)
    })
    .await;
    drop(permit);
    let mut ws = match setup {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            stats.note_error(e);
            stats.failed.fetch_add(1, Ordering::Release);
            return;
        }
        Err(_) => {
            stats.note_error("handshake + subscribe timed out".into());
            stats.failed.fetch_add(1, Ordering::Release);
            return;
        }
    };
    stats.connected.fetch_add(1, Ordering::Release);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let now = stats.clock.now_ns();
                    if let Some(sent) = payload::parse_send_ts(&text) {
                        stats.record(sent, now);
                    } else if text.contains("\"pusher:ping\"")
                        && ws.send(Message::text(Family::V1.pong())).await.is_err()
                    {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    stats.note_error("connection closed during the run".into());
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    stats.note_error(format!("read error during the run: {e}"));
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}
