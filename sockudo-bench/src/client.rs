//! One WebSocket subscriber per task: handshake, subscribe, then count and time deliveries.
//!
//! Memory per client is kept small: tungstenite buffers are sized down ([`ws_config`]), the task
//! owns its stream (no split, no channels, no locks), and the receive path only scans the text of
//! each frame for the benchmark timestamp ([`crate::payload::parse_send_ts`]); the only allocation
//! per message is tungstenite's own frame buffer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::clock::Clock;
use crate::histogram::Histogram;
use crate::payload;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Distinct error messages kept for the report (the rest are only counted).
const MAX_ERROR_KINDS: usize = 20;

/// Reply to a Pusher-level ping.
const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// Small client-side buffers: 10,000 clients × default 128 KiB read buffers would be > 1 GiB.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// Counters shared by all client tasks.
#[derive(Debug)]
pub struct ClientStats {
    clock: Clock,
    /// Clients that finished handshake + subscribe.
    pub connected: AtomicUsize,
    /// Clients whose handshake or subscribe failed.
    pub failed: AtomicUsize,
    /// Latest moment (ns since origin) a client became subscribed.
    pub last_ready_ns: AtomicU64,
    /// Connect → subscription_succeeded time per client (ns).
    pub setup_latency: Histogram,
    /// Subscribed clients per channel index.
    pub subscribers: Vec<AtomicU64>,
    /// Connections that ended before the run told them to stop.
    pub dropped: AtomicU64,
    /// `pusher:ping` frames answered with `pusher:pong`.
    pub pings_answered: AtomicU64,
    /// Send timestamps in `[window_start_ns, window_end_ns)` are "measured".
    pub window_start_ns: AtomicU64,
    /// End of the measured window (exclusive), ns since origin.
    pub window_end_ns: AtomicU64,
    /// Benchmark messages received, any time.
    pub received_total: AtomicU64,
    /// Benchmark messages received whose send time lies in the measured window.
    pub received_in_window: AtomicU64,
    /// Publish → receipt latency of measured messages (ns).
    pub latency: Histogram,
    /// Error message → count (first [`MAX_ERROR_KINDS`] kinds).
    errors: Mutex<BTreeMap<String, u64>>,
    errors_other: AtomicU64,
}

impl ClientStats {
    /// Fresh counters for `channels` channels.
    pub fn new(clock: Clock, channels: usize) -> Self {
        Self {
            clock,
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            last_ready_ns: AtomicU64::new(0),
            setup_latency: Histogram::new(),
            subscribers: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            dropped: AtomicU64::new(0),
            pings_answered: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            received_total: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            latency: Histogram::new(),
            errors: Mutex::new(BTreeMap::new()),
            errors_other: AtomicU64::new(0),
        }
    }

    /// Clients done with the connect phase, successfully or not.
    pub fn settled(&self) -> usize {
        self.connected.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }

    /// Set the measured window (ns since origin, end exclusive).
    pub fn set_window(&self, start_ns: u64, end_ns: u64) {
        self.window_start_ns.store(start_ns, Ordering::Release);
        self.window_end_ns.store(end_ns, Ordering::Release);
    }

    /// Error kinds seen, with counts; kinds past the cap are summed under "(other)".
    pub fn error_summary(&self) -> BTreeMap<String, u64> {
        let mut out = self.errors.lock().map(|g| g.clone()).unwrap_or_default();
        let other = self.errors_other.load(Ordering::Relaxed);
        if other > 0 {
            out.insert("(other)".into(), other);
        }
        out
    }

    fn note_error(&self, msg: String) {
        if let Ok(mut map) = self.errors.lock() {
            if let Some(n) = map.get_mut(&msg) {
                *n += 1;
                return;
            }
            if map.len() < MAX_ERROR_KINDS {
                map.insert(msg, 1);
                return;
            }
        }
        self.errors_other.fetch_add(1, Ordering::Relaxed);
    }

    /// Account one received frame's send timestamp at receipt time `now_ns`.
    fn record_delivery(&self, sent_ns: u64, now_ns: u64) {
        self.received_total.fetch_add(1, Ordering::Relaxed);
        let start = self.window_start_ns.load(Ordering::Relaxed);
        let end = self.window_end_ns.load(Ordering::Relaxed);
        if sent_ns >= start && sent_ns < end {
            self.received_in_window.fetch_add(1, Ordering::Relaxed);
            self.latency.record(now_ns.saturating_sub(sent_ns));
        }
    }
}

/// What one client needs to know.
#[derive(Debug)]
pub struct ClientPlan {
    /// Full WebSocket URL.
    pub url: String,
    /// Channel names; client `i` uses `channels[i % len]`.
    pub channels: Vec<String>,
    /// Budget for connect + subscribe.
    pub handshake_timeout: Duration,
    /// Limits parallel handshakes.
    pub gate: Arc<Semaphore>,
}

#[derive(Deserialize)]
struct Frame {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Run client `idx` until `stop` flips (or its connection ends).
pub async fn run(
    idx: usize,
    plan: Arc<ClientPlan>,
    stats: Arc<ClientStats>,
    mut stop: watch::Receiver<bool>,
) {
    let ch = idx % plan.channels.len();
    let Some(channel) = plan.channels.get(ch) else {
        return;
    };

    let Ok(permit) = plan.gate.clone().acquire_owned().await else {
        stats.failed.fetch_add(1, Ordering::Release);
        return;
    };
    let started = Instant::now();
    let setup = tokio::time::timeout(plan.handshake_timeout, handshake(&plan.url, channel)).await;
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
    stats
        .setup_latency
        .record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    if let Some(n) = stats.subscribers.get(ch) {
        n.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .last_ready_ns
        .fetch_max(stats.clock.now_ns(), Ordering::Relaxed);
    stats.connected.fetch_add(1, Ordering::Release);

    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let now = stats.clock.now_ns();
                    if let Some(sent) = payload::parse_send_ts(&text) {
                        stats.record_delivery(sent, now);
                    } else if text.contains("\"pusher:ping\"") || text.contains("\"sockudo:ping\"") {
                        if ws.send(Message::text(PONG)).await.is_err() {
                            stats.note_error("failed to send pusher:pong".into());
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        stats.pings_answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    stats.note_error(format!("server closed the connection during the run (code {code})"));
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    stats.note_error(format!("read error during the run: {e}"));
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {
                    stats.note_error("connection ended during the run".into());
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Connect, wait for `pusher:connection_established`, subscribe, wait for success.
async fn handshake(url: &str, channel: &str) -> Result<Ws, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    wait_for(&mut ws, "connection_established", None).await?;
    let subscribe =
        serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string();
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    wait_for(&mut ws, "subscription_succeeded", Some(channel)).await?;
    Ok(ws)
}

/// Read frames until `event` of either family (`pusher:` / `pusher_internal:` on protocol 7,
/// `sockudo:` / `sockudo_internal:` on V2), on `channel` if given; an error, subscription error
/// or close is an error. Other frames are skipped.
async fn wait_for(ws: &mut Ws, event: &str, channel: Option<&str>) -> Result<(), String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Frame = serde_json::from_str(&text)
                    .map_err(|e| format!("bad frame while waiting for {event}: {e}"))?;
                let name = frame.event.rsplit(':').next().unwrap_or_default();
                if name == event && (channel.is_none() || frame.channel.as_deref() == channel) {
                    return Ok(());
                }
                if name == "error" || name == "subscription_error" {
                    let data = frame.data.map(|d| d.to_string()).unwrap_or_default();
                    return Err(format!("{} while waiting for {event}: {data}", frame.event));
                }
                if name == "ping" {
                    ws.send(Message::text(PONG))
                        .await
                        .map_err(|e| format!("send pong: {e}"))?;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(format!("closed with code {code} while waiting for {event}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read error while waiting for {event}: {e}")),
            None => return Err(format!("connection ended while waiting for {event}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_classifies_by_send_time() {
        let stats = ClientStats::new(Clock::start(), 1);
        stats.set_window(1_000, 2_000);
        stats.record_delivery(999, 5_000); // warmup
        stats.record_delivery(1_000, 1_500);
        stats.record_delivery(1_999, 2_500);
        stats.record_delivery(2_000, 2_100); // after window
        assert_eq!(stats.received_total.load(Ordering::Relaxed), 4);
        assert_eq!(stats.received_in_window.load(Ordering::Relaxed), 2);
        let lat = stats.latency.snapshot();
        assert_eq!(lat.count(), 2);
        assert_eq!(lat.min(), 500);
        assert_eq!(lat.max(), 501);
    }

    #[test]
    fn error_kinds_are_capped() {
        let stats = ClientStats::new(Clock::start(), 1);
        for i in 0..(MAX_ERROR_KINDS + 5) {
            stats.note_error(format!("e{i}"));
        }
        stats.note_error("e0".into());
        let s = stats.error_summary();
        assert_eq!(s.get("e0"), Some(&2));
        assert_eq!(s.get("(other)"), Some(&5));
    }
}
