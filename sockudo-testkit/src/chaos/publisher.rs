//! The publisher: signed HTTP publishes of unique messages at a steady rate. Each message
//! carries a `message_id` and an `idempotency_key` (the same unique string) and is retried,
//! with the very same body, on the next live node until a 2xx comes back or its retry budget
//! is spent. Only acknowledged messages must be delivered; the rest are recorded as
//! unacknowledged (docs/protocol.md §7: a retry of an acknowledged key is the same message).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::chaos::killer::NodeLiveness;
use crate::chaos::records::PublishRecord;
use crate::client::ApiClient;

/// The event name of every chaos message.
pub const EVENT: &str = "chaos";

/// Salt of the publisher's random stream, so it differs from the killer's for one seed.
const RNG_SALT: u64 = 0x7075_626c_6973_6865;
/// Pause after a failed attempt, growing per attempt up to the last entry.
const BACKOFF_MS: [u64; 5] = [50, 100, 200, 400, 500];

/// What the publisher needs.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// One signed client per node (node ports survive restarts).
    pub apis: Arc<[ApiClient]>,
    pub liveness: Arc<NodeLiveness>,
    pub channels: Vec<String>,
    pub rate: f64,
    pub budget: Duration,
    pub seed: u64,
    /// The start of the run: record times are offsets from it.
    pub start: Instant,
}

impl Publisher {
    /// Publish until `stop` turns true, then wait for the messages still being retried and
    /// return every record, in sending order.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> JoinHandle<Vec<PublishRecord>> {
        tokio::spawn(self.run(stop))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) -> Vec<PublishRecord> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ RNG_SALT);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate));
        // Under load, publish late rather than in bursts.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight = JoinSet::new();
        let mut records = Vec::new();
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            let channel = self.channels[rng.random_range(0..self.channels.len())].clone();
            let message = Outgoing {
                message_id: format!("chaos-{:016x}-{n}", self.seed),
                channel,
                first_node: usize::try_from(n).unwrap_or(0) % self.apis.len(),
            };
            n += 1;
            in_flight.spawn(publish_one(
                Arc::clone(&self.apis),
                Arc::clone(&self.liveness),
                message,
                self.budget,
                self.start,
            ));
            while let Some(done) = in_flight.try_join_next() {
                records.extend(done.ok());
            }
        }
        while let Some(done) = in_flight.join_next().await {
            records.extend(done.ok());
        }
        records.sort_by_key(|r| r.sent_at);
        records
    }
}

/// One message to publish.
#[derive(Debug)]
struct Outgoing {
    message_id: String,
    channel: String,
    /// The node of the first attempt (round-robin over the message numbers).
    first_node: usize,
}

/// The publish body: `data` holds the id too, so a delivery names its message even if a
/// frame lacked `message_id`.
fn body(message: &Outgoing) -> Value {
    json!({
        "name": EVENT,
        "channel": message.channel,
        "data": json!({ "id": message.message_id }).to_string(),
        "message_id": message.message_id,
        "idempotency_key": message.message_id,
    })
}

/// Try `message` on live nodes in turn until a 2xx or `budget` has passed.
async fn publish_one(
    apis: Arc<[ApiClient]>,
    liveness: Arc<NodeLiveness>,
    message: Outgoing,
    budget: Duration,
    start: Instant,
) -> PublishRecord {
    let body = body(&message);
    let sent = Instant::now();
    let deadline = sent + budget;
    let mut record = PublishRecord {
        message_id: message.message_id.clone(),
        channel: message.channel.clone(),
        sent_at: sent.duration_since(start),
        acked_at: None,
        attempts: 0,
        serial: None,
        errors: Vec::new(),
    };
    let mut node = message.first_node;
    loop {
        node = liveness.next_up_from(node);
        record.attempts += 1;
        match apis[node].trigger_body(&body).await {
            Ok((status, response)) if (200..300).contains(&status) => {
                record.acked_at = Some(start.elapsed());
                record.serial = response["serials"][message.channel.as_str()].as_u64();
                return record;
            }
            Ok((status, response)) => record.errors.push(format!(
                "{:.2}s node {node}: {status} {response}",
                start.elapsed().as_secs_f64()
            )),
            Err(e) => record.errors.push(format!(
                "{:.2}s node {node}: {}",
                start.elapsed().as_secs_f64(),
                transport_error(&e)
            )),
        }
        let pause = Duration::from_millis(BACKOFF_MS[backoff_index(record.attempts)]);
        if Instant::now() + pause >= deadline {
            return record;
        }
        tokio::time::sleep(pause).await;
        node += 1;
    }
}

/// A transport error without the signed URL (long, and useless in a report).
fn transport_error(e: &crate::TestkitError) -> String {
    match e {
        crate::TestkitError::Http(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else if e.is_body() || e.is_decode() {
                "body"
            } else {
                "request"
            };
            let source = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("http {kind} error{source}")
        }
        other => other.to_string(),
    }
}

fn backoff_index(attempts: u32) -> usize {
    usize::try_from(attempts)
        .unwrap_or(usize::MAX)
        .saturating_sub(1)
        .min(BACKOFF_MS.len() - 1)
}
