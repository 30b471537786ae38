//! `--mode webhooks`: webhook delivery through the Redis queue, end to end.
//!
//! A `redis-server` and one `sockudo` node started with a TOML config (`--config`) that gives
//! the app `enable_client_messages = true`, no client-event rate limit, and one
//! `[[apps.webhooks]]` target with `event_types = ["client_event"]` pointing at a small hyper
//! server inside this tool; `QUEUE_DRIVER=redis`, so every batch goes through the Redis queue
//! before the node's worker POSTs it. `--webhook-clients` protocol-7 clients subscribe to one
//! `private-` channel each (signed with the app secret) and send `client-bench` events whose
//! data carries a sequence number and the send time.
//!
//! The receiver counts POSTs, 503s it answered, events, distinct sequence numbers and
//! duplicates, and the send → receipt latency of each event (this includes the node's batch
//! window, 250 ms by default). Three phases, each with its own sequence range:
//! 1. healthy: `--webhook-rate` events/s for `--webhook-secs`;
//! 2. the receiver answers 503 to the first `--webhook-fail-first` POSTs; 200 events in 1 s;
//! 3. the receiver answers 503 to everything for `--webhook-outage-secs`; 200 events in 2 s.
//!
//! A phase ends when every event arrived (or after a timeout). Retries are visible as 503s
//! answered (each is one failed attempt the worker retried with backoff: 1 s doubling to
//! 60 s, jittered to [bound/2, bound]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::clock::Clock;
use crate::histogram::Histogram;
use crate::procs;
use crate::report::Latency;
use crate::wsc::{self, Family};

fn progress(msg: &str) {
    eprintln!("[webhooks] {msg}");
}

/// Receiver counters of one phase.
#[derive(Debug)]
struct Phase {
    seq_lo: u64,
    seq_hi: u64,
    posts: AtomicU64,
    rejected: AtomicU64,
    events: AtomicU64,
    stray: AtomicU64,
    dups: AtomicU64,
    seen: Mutex<HashSet<u64>>,
    first_recv_ns: AtomicU64,
    last_recv_ns: AtomicU64,
    latency: Histogram,
    fail_remaining: AtomicU64,
    fail_until_ns: AtomicU64,
    /// Receipt time of the first accepted POST after the last rejected one.
    first_ok_after_fail_ns: AtomicU64,
}

impl Phase {
    fn new(seq_lo: u64, seq_hi: u64) -> Self {
        Phase {
            seq_lo,
            seq_hi,
            posts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            events: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
            first_recv_ns: AtomicU64::new(u64::MAX),
            last_recv_ns: AtomicU64::new(0),
            latency: Histogram::new(),
            fail_remaining: AtomicU64::new(0),
            fail_until_ns: AtomicU64::new(0),
            first_ok_after_fail_ns: AtomicU64::new(u64::MAX),
        }
    }

    fn distinct(&self) -> u64 {
        self.seen.lock().map(|s| s.len() as u64).unwrap_or(0)
    }
}

#[derive(Debug)]
struct Receiver {
    clock: Clock,
    phase: Mutex<Arc<Phase>>,
}

impl Receiver {
    fn current(&self) -> Option<Arc<Phase>> {
        self.phase.lock().ok().map(|p| p.clone())
    }

    fn handle(&self, body: &[u8]) -> StatusCode {
        let Some(phase) = self.current() else {
            return StatusCode::INTERNAL_SERVER_ERROR;
        };
        let now = self.clock.now_ns();
        phase.posts.fetch_add(1, Ordering::Relaxed);
        let failing_first = phase
            .fail_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing_first || now < phase.fail_until_ns.load(Ordering::Relaxed) {
            phase.rejected.fetch_add(1, Ordering::Relaxed);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if phase.rejected.load(Ordering::Relaxed) > 0 {
            phase
                .first_ok_after_fail_ns
                .fetch_min(now, Ordering::Relaxed);
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return StatusCode::BAD_REQUEST;
        };
        let Some(events) = v.get("events").and_then(Value::as_array) else {
            return StatusCode::BAD_REQUEST;
        };
        for e in events {
            phase.events.fetch_add(1, Ordering::Relaxed);
            let data = e.get("data").and_then(Value::as_str).unwrap_or_default();
            let (Some(seq), Some(ts)) = (
                wsc::u64_after(data, "bench_seq"),
                wsc::u64_after(data, "bench_ts"),
            ) else {
                phase.stray.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if seq < phase.seq_lo || seq >= phase.seq_hi {
                phase.stray.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let fresh = phase
                .seen
                .lock()
                .map(|mut s| s.insert(seq))
                .unwrap_or(false);
            if fresh {
                phase.latency.record(now.saturating_sub(ts));
                phase.first_recv_ns.fetch_min(now, Ordering::Relaxed);
                phase.last_recv_ns.fetch_max(now, Ordering::Relaxed);
            } else {
                phase.dups.fetch_add(1, Ordering::Relaxed);
            }
        }
        StatusCode::OK
    }
}

/// One phase's results.
#[derive(Debug, Serialize)]
pub struct PhaseRow {
    /// Phase name.
    pub name: String,
    /// Events sent by clients.
    pub sent: u64,
    /// Send rate asked for.
    pub rate: f64,
    /// Distinct events received by the target.
    pub delivered: u64,
    /// Duplicate events received.
    pub duplicates: u64,
    /// POSTs received (including rejected ones).
    pub posts: u64,
    /// POSTs answered 503 (each one a failed attempt that the worker retries).
    pub rejected: u64,
    /// Events per accepted POST.
    pub events_per_post: f64,
    /// Seconds from the first send to the last new event received.
    pub all_delivered_s: f64,
    /// delivered / all_delivered_s.
    pub delivered_per_s: f64,
    /// Send → webhook receipt (first copy).
    pub latency_ms: Latency,
    /// Seconds from the end of the outage (or the last 503) to the first accepted POST.
    pub recovery_s: Option<f64>,
    /// Client `pusher:error` frames while sending.
    pub client_errors: u64,
    /// Load average at the end.
    pub loadavg: String,
}

/// Run the mode.
pub async fn run(args: &Args, clock: Clock) -> Result<String, String> {
    let dir = procs::scratch_dir()?;
    let bin = procs::sockudo_bin(args.sockudo_bin.as_deref())?;
    let redis = procs::start_redis(&dir).await?;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind receiver: {e}"))?;
    let hook_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let rx = Arc::new(Receiver {
        clock,
        phase: Mutex::new(Arc::new(Phase::new(0, 0))),
    });
    let receiver = rx.clone();
    let server = tokio::spawn(crate::http_sink::serve(
        listener,
        b"",
        Arc::new(move |body: &[u8]| receiver.handle(body)),
    ));

    let config = dir.join("webhooks.toml");
    write_config(&config, args, &redis_url, hook_port)?;
    let env = vec![
        ("QUEUE_DRIVER".to_string(), "redis".to_string()),
        ("REDIS_URL".to_string(), redis_url.clone()),
    ];
    let node = procs::start_node(&bin, &dir, "webhook-node", &env, Some(&config)).await?;
    progress(&format!(
        "redis on {}, node on {}, receiver on {hook_port}, config {}",
        redis.port,
        node.port,
        config.display()
    ));

    // Senders: one private channel each.
    let g = args.webhook_clients.max(1);
    let url = wsc::url(&node.ws_base(), &args.key, Family::V1);
    let mut sinks = Vec::with_capacity(g);
    let client_errors = Arc::new(AtomicU64::new(0));
    for i in 0..g {
        let (mut ws, socket_id) = wsc::connect(&url, Family::V1).await?;
        let channel = format!("private-wh-{i}");
        let auth =
            sockudo_core::auth::sign_channel(&args.key, &args.secret, &socket_id, &channel, None);
        wsc::subscribe(&mut ws, Family::V1, &channel, Some(&auth)).await?;
        let (sink, mut stream) = ws.split();
        let errors = client_errors.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    if t.contains("\"pusher:error\"") {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if errors.load(Ordering::Relaxed) <= 3 {
                            eprintln!("[webhooks] client error: {t}");
                        }
                    }
                }
            }
        });
        sinks.push(Arc::new(tokio::sync::Mutex::new((sink, channel))));
    }
    progress(&format!("{g} clients subscribed to private channels"));

    let mut rows = Vec::new();
    let healthy_n = (args.webhook_rate * args.webhook_secs).round().max(1.0) as u64;
    let plans: Vec<(&str, u64, f64, u64, f64, f64)> = vec![
        // name, events, rate, fail first N, outage secs, timeout secs
        ("healthy target", healthy_n, args.webhook_rate, 0, 0.0, 25.0),
        (
            "first N POSTs answered 503",
            200,
            200.0,
            args.webhook_fail_first,
            0.0,
            30.0,
        ),
        (
            "target down (503) for the outage",
            200,
            100.0,
            0,
            args.webhook_outage_secs,
            args.webhook_outage_secs + 40.0,
        ),
    ];
    let mut seq_base = 0u64;
    for (name, count, rate, fail_first, outage, timeout) in plans {
        let phase = Arc::new(Phase::new(seq_base, seq_base + count));
        phase.fail_remaining.store(fail_first, Ordering::Relaxed);
        let start_ns = clock.now_ns() + 20_000_000;
        if outage > 0.0 {
            phase
                .fail_until_ns
                .store(start_ns + (outage * 1e9) as u64, Ordering::Relaxed);
        }
        if let Ok(mut p) = rx.phase.lock() {
            *p = phase.clone();
        }
        let errors0 = client_errors.load(Ordering::Relaxed);
        progress(&format!("phase '{name}': {count} events at {rate}/s"));
        // Event n is due at start + n / rate and goes out on client n % g.
        let tasks: Vec<_> = sinks
            .iter()
            .enumerate()
            .map(|(c, sink)| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut n = c as u64;
                    while n < count {
                        let due = start_ns + (n as f64 * 1e9 / rate) as u64;
                        tokio::time::sleep_until(clock.at(due)).await;
                        let mut guard = sink.lock().await;
                        let (sink, channel) = &mut *guard;
                        let frame = serde_json::json!({
                            "event": "client-bench",
                            "channel": channel,
                            "data": { "bench_ts": clock.now_ns(), "bench_seq": seq_base + n },
                        })
                        .to_string();
                        if sink.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                        n += g as u64;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        while phase.distinct() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Late duplicates show up shortly after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let delivered = phase.distinct();
        let last = phase.last_recv_ns.load(Ordering::Relaxed);
        let all_s = last.saturating_sub(start_ns) as f64 / 1e9;
        let accepted = phase.posts.load(Ordering::Relaxed) - phase.rejected.load(Ordering::Relaxed);
        let ok_after = phase.first_ok_after_fail_ns.load(Ordering::Relaxed);
        let fail_end = phase.fail_until_ns.load(Ordering::Relaxed).max(start_ns);
        let row = PhaseRow {
            name: name.to_string(),
            sent: count,
            rate,
            delivered,
            duplicates: phase.dups.load(Ordering::Relaxed),
            posts: phase.posts.load(Ordering::Relaxed),
            rejected: phase.rejected.load(Ordering::Relaxed),
            events_per_post: if accepted > 0 {
                phase.events.load(Ordering::Relaxed) as f64 / accepted as f64
            } else {
                0.0
            },
            all_delivered_s: all_s,
            delivered_per_s: if all_s > 0.0 {
                delivered as f64 / all_s
            } else {
                0.0
            },
            latency_ms: Latency::from_ns(&phase.latency.snapshot()),
            recovery_s: (phase.rejected.load(Ordering::Relaxed) > 0 && ok_after != u64::MAX)
                .then(|| ok_after.saturating_sub(fail_end) as f64 / 1e9),
            client_errors: client_errors.load(Ordering::Relaxed) - errors0,
            loadavg: procs::loadavg(),
        };
        progress(&format!(
            "  delivered {delivered}/{count} in {all_s:.2} s, {} POSTs ({} answered 503), {} duplicates, p50 {:.0} ms p99 {:.0} ms",
            row.posts, row.rejected, row.duplicates, row.latency_ms.p50, row.latency_ms.p99
        ));
        rows.push(row);
        seq_base += count;
    }
    server.abort();
    drop(node);
    drop(redis);
    if args.json {
        return serde_json::to_string_pretty(&rows).map_err(|e| e.to_string());
    }
    let mut s = format!(
        "webhooks: 1 node, QUEUE_DRIVER=redis, {g} clients sending client events, target = in-process hyper receiver\n\n"
    );
    s.push_str("| phase | events sent (rate/s) | delivered | dups | POSTs (503s) | events/POST | first send → all delivered | delivered/s | p50 / p99 / max ms | first 200 after failures | load |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        s.push_str(&format!(
            "| {} | {} ({:.0}) | {} | {} | {} ({}) | {:.1} | {:.2} s | {:.0} | {:.0} / {:.0} / {:.0} | {} | {} |\n",
            r.name,
            r.sent,
            r.rate,
            r.delivered,
            r.duplicates,
            r.posts,
            r.rejected,
            r.events_per_post,
            r.all_delivered_s,
            r.delivered_per_s,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.recovery_s.map_or_else(|| "–".into(), |v| format!("{v:.2} s")),
            r.loadavg
        ));
    }
    let errors: u64 = rows.iter().map(|r| r.client_errors).sum();
    s.push_str(&format!("\nclient pusher:error frames: {errors}\n"));
    Ok(s)
}

fn write_config(path: &Path, args: &Args, redis_url: &str, hook_port: u16) -> Result<(), String> {
    let text = format!(
        r#"# written by sockudo-bench --mode webhooks
[queue]
driver = "redis"

[redis]
url = "{redis_url}"

[[apps]]
id = "{id}"
key = "{key}"
secret = "{secret}"
enable_client_messages = true
max_client_events_per_second = 0

[[apps.webhooks]]
url = "http://127.0.0.1:{hook_port}/hook"
event_types = ["client_event"]
"#,
        id = args.app_id,
        key = args.key,
        secret = args.secret,
    );
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}
