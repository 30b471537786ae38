//! The V2 subscribers: `sockudo-client` clients connected through the balancer with
//! `?protocol=2`. When their node dies they reconnect (the balancer skips the dead backend)
//! and resume on their own; the scenario only records what each one is handed.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockudo_client::{
    ChannelEvent, Client, ClientOptions, ConnectionState, ExponentialBackoff, Message, Protocol,
    Subscription,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chaos::publisher::EVENT;
use crate::chaos::records::{
    Delivery, ResumeOutcome, ResumeRecord, SubscriberRecord, SubscriberStats,
};
use crate::TestkitError;

/// Reconnect backoff of the subscribers: quick, as a node's clients all come back at once.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a closed subscriber's reader tasks get to hand over what is queued.
const READER_DRAIN: Duration = Duration::from_secs(5);

/// A subscriber's record while the run goes on, plus an index of what it has received.
#[derive(Debug, Default)]
struct LiveSubscriber {
    record: SubscriberRecord,
    /// `(channel, message_id)` of every delivery, for the settling check.
    seen: HashSet<(String, String)>,
}

type Shared = Arc<Mutex<LiveSubscriber>>;

fn lock(live: &Shared) -> MutexGuard<'_, LiveSubscriber> {
    live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running subscriber.
#[derive(Debug)]
struct Handle {
    client: Client,
    live: Shared,
    tasks: Vec<JoinHandle<()>>,
}

/// Every subscriber of the run.
#[derive(Debug)]
pub(crate) struct Subscribers {
    handles: Vec<Handle>,
}

impl Subscribers {
    /// Connect subscriber `i` for each entry of `channels` (its channel list) to the
    /// WebSocket base URL `base` (`ws://host:port`) and wait until every one is subscribed.
    pub async fn start(
        base: &str,
        app_key: &str,
        channels: Vec<Vec<String>>,
        start: Instant,
    ) -> Result<Subscribers, TestkitError> {
        let mut handles = Vec::with_capacity(channels.len());
        for (index, channels) in channels.into_iter().enumerate() {
            handles.push(start_one(base, app_key, index, channels, start).await?);
        }
        Ok(Subscribers { handles })
    }

    /// Whether every subscriber has received every message of `expected` (message ids per
    /// channel) on each of its channels.
    pub fn have_all(&self, expected: &BTreeMap<String, Vec<String>>) -> bool {
        self.handles.iter().all(|h| {
            let live = lock(&h.live);
            live.record.channels.iter().all(|channel| {
                expected.get(channel).is_none_or(|ids| {
                    ids.iter()
                        .all(|id| live.seen.contains(&(channel.clone(), id.clone())))
                })
            })
        })
    }

    /// Close every client and return the records.
    pub async fn finish(mut self) -> Vec<SubscriberRecord> {
        let handles = std::mem::take(&mut self.handles);
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            let stats = handle.client.stats();
            // A failed close only means the connection task is already gone.
            let _ = handle.client.close().await;
            for task in handle.tasks {
                let abort = task.abort_handle();
                if tokio::time::timeout(READER_DRAIN, task).await.is_err() {
                    abort.abort();
                }
            }
            let mut live = lock(&handle.live);
            live.record.stats = SubscriberStats {
                reconnects: stats.reconnects,
                duplicates_dropped: stats.duplicates_dropped,
                slow_consumer_drops: stats.slow_consumer_drops,
            };
            out.push(std::mem::take(&mut live.record));
        }
        out
    }
}

impl Drop for Subscribers {
    /// The reader tasks hold the subscriptions, which keep each client's connection task
    /// alive: a run that ended early stops them here.
    fn drop(&mut self) {
        for handle in &self.handles {
            for task in &handle.tasks {
                task.abort();
            }
        }
    }
}

async fn start_one(
    base: &str,
    app_key: &str,
    index: usize,
    channels: Vec<String>,
    start: Instant,
) -> Result<Handle, TestkitError> {
    let options = ClientOptions::new(app_key)
        .url(base)?
        .protocol(Protocol::V2)
        .backoff(ExponentialBackoff::new(BACKOFF_MIN, BACKOFF_MAX));
    let client = Client::connect(options).await?;
    let live: Shared = Arc::new(Mutex::new(LiveSubscriber {
        record: SubscriberRecord {
            index,
            channels: channels.clone(),
            ..SubscriberRecord::default()
        },
        seen: HashSet::new(),
    }));
    let mut tasks = vec![tokio::spawn(watch_connection(
        client.watch_state(),
        Arc::clone(&live),
        start,
    ))];
    for channel in channels {
        let subscription = client.subscribe(channel).await?;
        tasks.push(tokio::spawn(read(subscription, Arc::clone(&live), start)));
    }
    Ok(Handle {
        client,
        live,
        tasks,
    })
}

/// Record every connect and disconnect until the client's connection task ends.
async fn watch_connection(
    mut state: watch::Receiver<ConnectionState>,
    live: Shared,
    start: Instant,
) {
    let mut connected = state.borrow_and_update().is_connected();
    while state.changed().await.is_ok() {
        let now = state.borrow_and_update().is_connected();
        if now != connected {
            connected = now;
            lock(&live)
                .record
                .connection_changes
                .push((start.elapsed(), now));
        }
    }
}

/// Record every event of one subscription until its stream ends.
async fn read(mut subscription: Subscription, live: Shared, start: Instant) {
    let channel = subscription.channel().to_string();
    while let Some(event) = subscription.recv().await {
        let at = start.elapsed();
        let mut live = lock(&live);
        match event {
            ChannelEvent::Message(m) if m.event == EVENT => {
                let delivery = delivery(m, at);
                live.seen
                    .insert((delivery.channel.clone(), delivery.message_id.clone()));
                live.record.deliveries.push(delivery);
            }
            ChannelEvent::Recovered { source, replayed } => {
                live.record.resumes.push(ResumeRecord {
                    channel: channel.clone(),
                    at,
                    outcome: ResumeOutcome::Recovered {
                        source: source.to_string(),
                        replayed,
                    },
                });
            }
            ChannelEvent::RecoveryFailed(failure) => {
                live.record.resumes.push(ResumeRecord {
                    channel: channel.clone(),
                    at,
                    outcome: ResumeOutcome::Failed {
                        code: failure.code.to_string(),
                        reason: failure.reason,
                    },
                });
            }
            ChannelEvent::Resubscribed => live.record.unresumed_resubscribes += 1,
            ChannelEvent::SubscriptionFailed(e) => {
                live.record
                    .subscription_failures
                    .push(format!("{channel}: {e}"));
            }
            _ => {}
        }
    }
}

/// The delivery record of message `m`: its id from the frame, else from the payload.
fn delivery(m: Message, at: Duration) -> Delivery {
    let message_id = m.message_id.clone().unwrap_or_else(|| {
        m.json::<Value>()
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default()
    });
    Delivery {
        channel: m.channel,
        message_id,
        serial: m.serial,
        stream_id: m.stream_id,
        at,
    }
}
