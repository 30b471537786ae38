//! The result of a run: one serialisable struct, printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::histogram::Snapshot;

/// Whole-run results.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `publish` or `connect-only`.
    pub mode: &'static str,
    /// What was asked for.
    pub setup: Setup,
    /// Connect phase.
    pub connect: ConnectReport,
    /// Server and tool memory.
    pub memory: MemoryReport,
    /// HTTP publishing (publish mode only).
    pub publish: Option<PublishReport>,
    /// Deliveries in the measured window (publish mode only).
    pub delivery: Option<DeliveryReport>,
}

/// The run's parameters.
#[derive(Debug, Serialize)]
pub struct Setup {
    /// WebSocket URL clients used.
    pub ws_url: String,
    /// HTTP API base.
    pub http: String,
    /// Requested connections.
    pub connections: usize,
    /// Channels subscribers were spread over.
    pub channels: usize,
    /// Parallel handshakes.
    pub connect_concurrency: usize,
    /// Requested publishes per second.
    pub rate: f64,
    /// Publisher tasks.
    pub publishers: usize,
    /// `data` size in bytes.
    pub payload_bytes: usize,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// This process's open-file limit after raising it.
    pub nofile_limit: u64,
}

/// Connection setup results.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    /// Clients subscribed.
    pub connected: usize,
    /// Clients that failed handshake or subscribe.
    pub failed: usize,
    /// From the first connect attempt to the last successful subscribe.
    pub elapsed_s: f64,
    /// `connected / elapsed_s`: handshake + subscribe completions per second.
    pub setup_rate_per_s: f64,
    /// Per-connection connect → subscription_succeeded time.
    pub setup_latency_ms: Latency,
    /// Client error message → count (connect failures and connections lost during the run).
    pub errors: BTreeMap<String, u64>,
}

/// Memory samples (KiB) and the derived per-connection cost.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    /// Server process sampled.
    pub server_pid: Option<u32>,
    /// Server VmRSS before any client connected.
    pub server_rss_before_kib: Option<u64>,
    /// Server VmRSS with everyone subscribed and idle.
    pub server_rss_idle_kib: Option<u64>,
    /// Server VmRSS right after the publish phase.
    pub server_rss_after_load_kib: Option<u64>,
    /// `(idle - before) / connected`, in bytes.
    pub server_rss_per_idle_connection_bytes: Option<f64>,
    /// This tool's VmRSS with everyone subscribed and idle.
    pub bench_rss_idle_kib: Option<u64>,
}

/// HTTP publish results.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    /// Requested rate.
    pub target_rate_per_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// 200 responses.
    pub ok: u64,
    /// Responses with any other status.
    pub non_200: u64,
    /// Requests with no response (connect error, timeout).
    pub transport_errors: u64,
    /// Status code → count.
    pub statuses: BTreeMap<String, u64>,
    /// `sent / (last send − first send)`.
    pub achieved_rate_per_s: f64,
    /// Request → full response time.
    pub http_latency_ms: Latency,
    /// Error text → count.
    pub errors: BTreeMap<String, u64>,
}

/// Delivery results for messages published inside the measured window.
#[derive(Debug, Serialize)]
pub struct DeliveryReport {
    /// Measured window length.
    pub window_s: f64,
    /// Σ over 200-answered in-window publishes of the channel's subscriber count.
    pub expected: u64,
    /// In-window messages received by clients.
    pub received: u64,
    /// `expected − received` when positive.
    pub lost: u64,
    /// `lost / expected` in percent.
    pub loss_pct: f64,
    /// `received − expected` when positive (duplicates or a subscriber count that changed).
    pub extra: u64,
    /// `received / window_s`, all clients together.
    pub deliveries_per_s: f64,
    /// Publish send → client receipt.
    pub latency_ms: Latency,
    /// Benchmark messages received at any time (warmup included).
    pub received_total: u64,
    /// Connections that ended before the run stopped them.
    pub dropped_connections: u64,
    /// `pusher:ping` answered.
    pub pings_answered: u64,
    /// Server CPU (user + system, from `/proc`, `--server-pid`) from the first publish until
    /// the deliveries drained, divided by the deliveries received meanwhile (warmup included).
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// Distribution summary in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum (exact).
    pub max: f64,
}

impl Latency {
    /// Summarise a nanosecond histogram in milliseconds.
    pub fn from_ns(s: &Snapshot) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        Self {
            count: s.count(),
            mean: s.mean() / 1e6,
            p50: ms(s.quantile(0.50)),
            p90: ms(s.quantile(0.90)),
            p99: ms(s.quantile(0.99)),
            p999: ms(s.quantile(0.999)),
            max: ms(s.max()),
        }
    }

    fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean, self.count
        )
    }
}

fn kib(v: Option<u64>) -> String {
    v.map(|k| format!("{:.1} MiB ({k} KiB)", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

impl Report {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"serialise report: {e}\"}}"))
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let s = &self.setup;
        let c = &self.connect;
        let m = &self.memory;
        let mut out = String::new();
        let _ = writeln!(out, "sockudo-bench — mode {}", self.mode);
        let mut row = |k: &str, v: String| {
            if k.starts_with('[') {
                let _ = writeln!(out, "\n{k}");
            } else {
                let _ = writeln!(out, "  {k:<28} {v}");
            }
        };
        row("websocket", s.ws_url.clone());
        row("http", s.http.clone());
        row(
            "connections requested",
            format!("{} over {} channel(s)", s.connections, s.channels),
        );
        row("connect concurrency", s.connect_concurrency.to_string());
        row("open-file limit", s.nofile_limit.to_string());
        row("[connect]", String::new());
        row(
            "connected / failed",
            format!("{} / {}", c.connected, c.failed),
        );
        row("connect phase", format!("{:.2} s", c.elapsed_s));
        row(
            "setup rate",
            format!("{:.0} conn/s (handshake + subscribe)", c.setup_rate_per_s),
        );
        row("setup latency ms", c.setup_latency_ms.line());
        for (e, n) in &c.errors {
            row("  client error", format!("{n} × {e}"));
        }
        row("[memory]", String::new());
        if let Some(pid) = m.server_pid {
            row("server pid", pid.to_string());
            row("server RSS before", kib(m.server_rss_before_kib));
            row("server RSS idle", kib(m.server_rss_idle_kib));
            if m.server_rss_after_load_kib.is_some() {
                row("server RSS after load", kib(m.server_rss_after_load_kib));
            }
            row(
                "server RSS / idle conn",
                m.server_rss_per_idle_connection_bytes
                    .map(|b| format!("{:.0} B ({:.1} KiB)", b, b / 1024.0))
                    .unwrap_or_else(|| "-".into()),
            );
        } else {
            row("server RSS", "not sampled (pass --server-pid)".into());
        }
        row("bench RSS idle", kib(m.bench_rss_idle_kib));

        if let Some(p) = &self.publish {
            row("[publish]", String::new());
            row(
                "rate target / achieved",
                format!(
                    "{:.1} / {:.1} per s",
                    p.target_rate_per_s, p.achieved_rate_per_s
                ),
            );
            row(
                "publishers / payload",
                format!("{} tasks / {} B", s.publishers, s.payload_bytes),
            );
            row(
                "sent / 200 / non-200 / err",
                format!(
                    "{} / {} / {} / {}",
                    p.sent, p.ok, p.non_200, p.transport_errors
                ),
            );
            let statuses: Vec<String> = p
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            row("statuses", statuses.join(", "));
            row("HTTP latency ms", p.http_latency_ms.line());
            for (e, n) in &p.errors {
                row("  error", format!("{n} × {e}"));
            }
        }
        if let Some(d) = &self.delivery {
            row("[delivery]", String::new());
            row(
                "window",
                format!("{:.1} s after {:.1} s warmup", d.window_s, s.warmup_s),
            );
            row(
                "expected / received",
                format!("{} / {}", d.expected, d.received),
            );
            row("lost", format!("{} ({:.3} %)", d.lost, d.loss_pct));
            if d.extra > 0 {
                row("extra (dup?)", d.extra.to_string());
            }
            row("deliveries/s", format!("{:.0}", d.deliveries_per_s));
            row("latency ms", d.latency_ms.line());
            row("received incl. warmup", d.received_total.to_string());
            row("dropped connections", d.dropped_connections.to_string());
            if let Some(us) = d.server_cpu_us_per_delivery {
                row("server CPU per delivery", format!("{us:.2} µs"));
            }
            if d.pings_answered > 0 {
                row("pusher:ping answered", d.pings_answered.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;

    #[test]
    fn latency_converts_ns_to_ms() {
        let h = Histogram::new();
        for v in [1_000_000u64, 2_000_000, 3_000_000] {
            h.record(v);
        }
        let l = Latency::from_ns(&h.snapshot());
        assert_eq!(l.count, 3);
        assert!((l.mean - 2.0).abs() < 1e-9);
        assert!((l.max - 3.0).abs() < 1e-9);
        assert!(l.p50 >= 2.0 && l.p50 < 2.05);
    }
}
