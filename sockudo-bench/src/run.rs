//! The phases of a run: connect everyone, idle and sample RSS, publish, drain, stop, report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::cli::{Args, Mode};
use crate::client::{self, ClientPlan, ClientStats};
use crate::clock::Clock;
use crate::publisher::{self, PublishPlan, PublishStats, PublisherOutcome};
use crate::report::{
    ConnectReport, DeliveryReport, Latency, MemoryReport, PublishReport, Report, Setup,
};
use crate::rss;

const NS_PER_S: f64 = 1e9;

fn secs_to_ns(s: f64) -> u64 {
    (s * NS_PER_S) as u64
}

/// Progress lines go to stderr so `--json` output on stdout stays clean.
fn progress(msg: &str) {
    eprintln!("[sockudo-bench] {msg}");
}

/// Execute the run described by `args`.
pub async fn run(args: Args, clock: Clock, nofile_limit: u64) -> Report {
    let channels = args.channel_names();
    let n = args.connections;
    let stats = Arc::new(ClientStats::new(clock, channels.len()));

    let rss_before = args.server_pid.and_then(rss::vm_rss_kib);
    if let (Some(pid), None) = (args.server_pid, rss_before) {
        progress(&format!(
            "warning: cannot read /proc/{pid}/status; server RSS will be missing"
        ));
    }

    // Connect phase.
    let (stop_tx, stop_rx) = watch::channel(false);
    let plan = Arc::new(ClientPlan {
        url: args.ws_url(),
        channels: channels.clone(),
        handshake_timeout: Duration::from_secs_f64(args.handshake_timeout),
        gate: Arc::new(Semaphore::new(args.connect_concurrency)),
    });
    progress(&format!(
        "connecting {n} clients to {} ({} in parallel)",
        plan.url, args.connect_concurrency
    ));
    let connect_start_ns = clock.now_ns();
    let clients: Vec<_> = (0..n)
        .map(|i| tokio::spawn(client::run(i, plan.clone(), stats.clone(), stop_rx.clone())))
        .collect();
    let mut last_print = clock.now_ns();
    while stats.settled() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if clock.now_ns() - last_print >= 1_000_000_000 {
            last_print = clock.now_ns();
            progress(&format!(
                "  {} connected, {} failed of {n}",
                stats.connected.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed)
            ));
        }
    }
    let connected = stats.connected.load(Ordering::Acquire);
    let failed = stats.failed.load(Ordering::Acquire);
    let last_ready = stats.last_ready_ns.load(Ordering::Relaxed);
    let connect_elapsed_s = if connected > 0 {
        last_ready.saturating_sub(connect_start_ns) as f64 / NS_PER_S
    } else {
        (clock.now_ns() - connect_start_ns) as f64 / NS_PER_S
    };
    let setup_rate = if connect_elapsed_s > 0.0 {
        connected as f64 / connect_elapsed_s
    } else {
        0.0
    };
    progress(&format!(
        "connect phase done: {connected} subscribed, {failed} failed in {connect_elapsed_s:.2} s ({setup_rate:.0}/s)"
    ));

    // Idle, then sample memory.
    tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
    let rss_idle = args.server_pid.and_then(rss::vm_rss_kib);
    let bench_rss_idle = rss::self_rss_kib();

    let mut publish_report = None;
    let mut delivery_report = None;
    let mut rss_after_load = None;

    if args.mode == Mode::Publish {
        let start_ns = clock.now_ns() + 50_000_000;
        let window = (
            start_ns + secs_to_ns(args.warmup),
            start_ns + secs_to_ns(args.warmup + args.duration),
        );
        stats.set_window(window.0, window.1);
        let pub_stats = Arc::new(PublishStats::new(channels.len()));
        let pub_plan = Arc::new(PublishPlan {
            http_base: args.http.trim_end_matches('/').to_string(),
            app_id: args.app_id.clone(),
            key: args.key.clone(),
            secret: args.secret.clone(),
            channels: channels.clone(),
            rate: args.rate,
            publishers: args.publishers,
            payload_bytes: args.payload_bytes,
            start_ns,
            end_ns: window.1,
            window,
        });
        progress(&format!(
            "publishing {:.1}/s for {:.1} s warmup + {:.1} s measured ({} publishers)",
            args.rate, args.warmup, args.duration, args.publishers
        ));
        let cpu_before = args.server_pid.and_then(crate::procs::cpu_secs);
        let received_before = stats.received_total.load(Ordering::Relaxed);
        let mut outcome = PublisherOutcome::default();
        for h in publisher::spawn_all(pub_plan, pub_stats.clone(), clock) {
            match h.await {
                Ok(o) => outcome.merge(o),
                Err(e) => {
                    *outcome
                        .errors
                        .entry(format!("publisher task failed: {e}"))
                        .or_default() += 1;
                }
            }
        }

        // Expected in-window deliveries: each 200-answered publish × its channel's subscribers.
        let expected: u64 = pub_stats
            .ok_in_window
            .iter()
            .zip(stats.subscribers.iter())
            .map(|(ok, subs)| ok.load(Ordering::Relaxed) * subs.load(Ordering::Relaxed))
            .sum();
        let drain_deadline = clock.now_ns() + secs_to_ns(args.drain);
        while stats.received_in_window.load(Ordering::Relaxed) < expected
            && clock.now_ns() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rss_after_load = args.server_pid.and_then(rss::vm_rss_kib);
        let cpu_after = args.server_pid.and_then(crate::procs::cpu_secs);
        let delivered = stats
            .received_total
            .load(Ordering::Relaxed)
            .saturating_sub(received_before);
        let server_cpu_us_per_delivery = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if delivered > 0 => Some((a - b) * 1e6 / delivered as f64),
            _ => None,
        };

        let received = stats.received_in_window.load(Ordering::Relaxed);
        let window_s = args.duration;
        let lost = expected.saturating_sub(received);
        delivery_report = Some(DeliveryReport {
            window_s,
            expected,
            received,
            lost,
            loss_pct: if expected > 0 {
                lost as f64 * 100.0 / expected as f64
            } else {
                0.0
            },
            extra: received.saturating_sub(expected),
            deliveries_per_s: received as f64 / window_s,
            latency_ms: Latency::from_ns(&stats.latency.snapshot()),
            received_total: stats.received_total.load(Ordering::Relaxed),
            dropped_connections: stats.dropped.load(Ordering::Relaxed),
            pings_answered: stats.pings_answered.load(Ordering::Relaxed),
            server_cpu_us_per_delivery,
        });

        let sent = pub_stats.sent.load(Ordering::Relaxed);
        let first = pub_stats.first_send_ns.load(Ordering::Relaxed);
        let last = pub_stats.last_send_ns.load(Ordering::Relaxed);
        let achieved = if sent > 1 && last > first {
            (sent - 1) as f64 * NS_PER_S / (last - first) as f64
        } else {
            0.0
        };
        let ok = pub_stats.ok.load(Ordering::Relaxed);
        let non_200: u64 = outcome
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| *n)
            .sum();
        publish_report = Some(PublishReport {
            target_rate_per_s: args.rate,
            sent,
            ok,
            non_200,
            transport_errors: pub_stats.failed.load(Ordering::Relaxed),
            statuses: outcome
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            achieved_rate_per_s: achieved,
            http_latency_ms: Latency::from_ns(&pub_stats.http_latency.snapshot()),
            errors: outcome.errors,
        });
    }

    // Stop and close every client.
    let _ = stop_tx.send(true);
    let close_all = async {
        for h in clients {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), close_all)
        .await
        .is_err()
    {
        progress("warning: some clients did not close within 15 s");
    }

    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(i)) if connected > 0 => {
            Some((i as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    Report {
        mode: match args.mode {
            Mode::Publish => "publish",
            Mode::ConnectOnly => "connect-only",
            Mode::ClusterFanout => "cluster-fanout",
            Mode::ResumeStorm => "resume-storm",
            Mode::Webhooks => "webhooks",
            Mode::InterestBytes => "interest-bytes",
            Mode::ChannelFlood => "channel-flood",
            Mode::BareServer => "bare-server",
            Mode::Push => "push",
        },
        setup: Setup {
            ws_url: plan.url.clone(),
            http: args.http.clone(),
            connections: n,
            channels: channels.len(),
            connect_concurrency: args.connect_concurrency,
            rate: args.rate,
            publishers: args.publishers,
            payload_bytes: args.payload_bytes,
            warmup_s: args.warmup,
            duration_s: args.duration,
            nofile_limit,
        },
        connect: ConnectReport {
            connected,
            failed,
            elapsed_s: connect_elapsed_s,
            setup_rate_per_s: setup_rate,
            setup_latency_ms: Latency::from_ns(&stats.setup_latency.snapshot()),
            errors: stats.error_summary(),
        },
        memory: MemoryReport {
            server_pid: args.server_pid,
            server_rss_before_kib: rss_before,
            server_rss_idle_kib: rss_idle,
            server_rss_after_load_kib: rss_after_load,
            server_rss_per_idle_connection_bytes: per_conn,
            bench_rss_idle_kib: bench_rss_idle,
        },
        publish: publish_report,
        delivery: delivery_report,
    }
}
