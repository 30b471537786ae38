//! HTTP publishers: signed `POST /apps/{id}/events` at a fixed aggregate rate.
//!
//! Publish `n` (0, 1, 2, …) is due at `start + n / rate` and goes to channel `n % K`; publisher
//! task `p` of `P` sends `n = p, p + P, p + 2P, …`, waiting for each response before the next
//! (a late task sends immediately, so a slow server shows up as a lower achieved rate and as
//! latency, not as silently skipped publishes). The send timestamp is taken just before the
//! request is signed and written. One hyper-util legacy client with keep-alive is shared.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::clock::Clock;
use crate::histogram::Histogram;
use crate::payload;

/// Give up on one publish request after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Event name of benchmark messages.
pub const EVENT_NAME: &str = "bench";

/// Everything a publisher task needs.
#[derive(Debug)]
pub struct PublishPlan {
    /// HTTP base, no trailing slash.
    pub http_base: String,
    /// App id (URL path).
    pub app_id: String,
    /// App key.
    pub key: String,
    /// App secret.
    pub secret: String,
    /// Channel names, publish `n` goes to `channels[n % len]`.
    pub channels: Vec<String>,
    /// Aggregate publishes per second.
    pub rate: f64,
    /// Number of publisher tasks.
    pub publishers: usize,
    /// Padded size of the `data` string.
    pub payload_bytes: usize,
    /// First publish is due at this time (ns since origin).
    pub start_ns: u64,
    /// No publish is due at or after this time (ns since origin).
    pub end_ns: u64,
    /// Measured window (ns since origin, end exclusive): used to count expected deliveries.
    pub window: (u64, u64),
}

/// Counters shared by the publisher tasks.
#[derive(Debug)]
pub struct PublishStats {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Transport errors and timeouts (no HTTP status).
    pub failed: AtomicU64,
    /// 200-answered publishes with a send time inside the measured window, per channel.
    pub ok_in_window: Vec<AtomicU64>,
    /// Request → full response latency (ns).
    pub http_latency: Histogram,
    /// First and last send time (ns since origin).
    pub first_send_ns: AtomicU64,
    /// Last send time (ns since origin).
    pub last_send_ns: AtomicU64,
}

impl PublishStats {
    /// Fresh counters for `channels` channels.
    pub fn new(channels: usize) -> Self {
        Self {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ok_in_window: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            http_latency: Histogram::new(),
            first_send_ns: AtomicU64::new(u64::MAX),
            last_send_ns: AtomicU64::new(0),
        }
    }
}

/// What one publisher task returns: HTTP status → count, and a sample error message per kind.
#[derive(Debug, Default)]
pub struct PublisherOutcome {
    /// Status code → responses.
    pub statuses: BTreeMap<u16, u64>,
    /// Error text → count, for transport failures and a sample of non-200 bodies.
    pub errors: BTreeMap<String, u64>,
}

impl PublisherOutcome {
    /// Add another task's outcome into this one.
    pub fn merge(&mut self, other: PublisherOutcome) {
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

#[derive(Serialize)]
struct PublishBody<'a> {
    name: &'a str,
    channel: &'a str,
    data: &'a str,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1 client pool sized for `publishers` concurrent requests.
pub fn http_client(publishers: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(publishers.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Spawn the publisher tasks; each resolves to its [`PublisherOutcome`].
pub fn spawn_all(
    plan: Arc<PublishPlan>,
    stats: Arc<PublishStats>,
    clock: Clock,
) -> Vec<tokio::task::JoinHandle<PublisherOutcome>> {
    let client = http_client(plan.publishers);
    (0..plan.publishers)
        .map(|p| {
            tokio::spawn(run_one(
                p,
                client.clone(),
                plan.clone(),
                stats.clone(),
                clock,
            ))
        })
        .collect()
}

async fn run_one(
    task: usize,
    client: HttpClient,
    plan: Arc<PublishPlan>,
    stats: Arc<PublishStats>,
    clock: Clock,
) -> PublisherOutcome {
    let mut out = PublisherOutcome::default();
    let path = format!("/apps/{}/events", plan.app_id);
    let interval_ns = 1e9 / plan.rate;
    let mut n = task as u64;
    loop {
        let due_ns = plan
            .start_ns
            .saturating_add((n as f64 * interval_ns) as u64);
        if due_ns >= plan.end_ns {
            break;
        }
        tokio::time::sleep_until(clock.at(due_ns)).await;

        let ch = (n % plan.channels.len() as u64) as usize;
        let Some(channel) = plan.channels.get(ch) else {
            break;
        };
        let sent_ns = clock.now_ns();
        let data = payload::build_data(sent_ns, n, plan.payload_bytes);
        let body = match serde_json::to_vec(&PublishBody {
            name: EVENT_NAME,
            channel,
            data: &data,
        }) {
            Ok(b) => b,
            Err(e) => {
                *out.errors.entry(format!("encode body: {e}")).or_default() += 1;
                break;
            }
        };
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let query = sockudo_core::auth::sign_api_request(
            &plan.key,
            &plan.secret,
            "POST",
            &path,
            &[],
            &body,
            unix_now,
        );
        let uri = format!("{}{}?{}", plan.http_base, path, query);

        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.first_send_ns.fetch_min(sent_ns, Ordering::Relaxed);
        stats.last_send_ns.fetch_max(sent_ns, Ordering::Relaxed);
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, send(&client, &uri, body)).await {
            Ok(Ok((status, resp_body))) => {
                stats
                    .http_latency
                    .record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
                *out.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    if sent_ns >= plan.window.0 && sent_ns < plan.window.1 {
                        if let Some(c) = stats.ok_in_window.get(ch) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else if out.errors.len() < 10 {
                    let text = String::from_utf8_lossy(&resp_body);
                    let text: String = text.chars().take(200).collect();
                    *out.errors
                        .entry(format!("HTTP {status}: {text}"))
                        .or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                *out.errors.entry(e).or_default() += 1;
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                *out.errors.entry("request timed out".into()).or_default() += 1;
            }
        }
        n += plan.publishers as u64;
    }
    out
}

/// Send one request and read the whole response (so the connection goes back to the pool).
async fn send(client: &HttpClient, uri: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("build request: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("read response: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape_carries_data_as_a_string() {
        let data = payload::build_data(5, 1, 80);
        let body = serde_json::to_string(&PublishBody {
            name: EVENT_NAME,
            channel: "bench",
            data: &data,
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "bench");
        assert_eq!(v["channel"], "bench");
        assert_eq!(v["data"].as_str().map(str::len), Some(80));
    }

    #[test]
    fn outcomes_merge() {
        let mut a = PublisherOutcome::default();
        a.statuses.insert(200, 3);
        let mut b = PublisherOutcome::default();
        b.statuses.insert(200, 2);
        b.statuses.insert(503, 1);
        a.merge(b);
        assert_eq!(a.statuses.get(&200), Some(&5));
        assert_eq!(a.statuses.get(&503), Some(&1));
    }
}
