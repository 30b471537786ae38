//! [`Transport`] over Apache Iggy (feature `iggy`). **Not proven against an Iggy server**: no
//! server can be had where this was written; the mapping and the state machine are
//! unit-tested against the client crate's types (`iggy` 0.11), the network path is not.
//!
//! # Mapping
//! The Iggy stream is [`IggyTransportOptions::stream`] (`IGGY_STREAM`); every logical topic of
//! one cluster travels on **one** Iggy topic of one partition in it
//! ([`IggyTransportOptions::topic_for_prefix`]: `{prefix}-sockudo`), created when missing
//! (stream too) with a message expiry of [`IggyTransportOptions::retention`]. The logical
//! topic (`P.broadcast`, `P.ch.{app}.{channel}`, …) rides in the user header `t`; each node
//! polls the whole partition and routes locally. Subscribing to one logical topic is a local map
//! update, so [`TransportCapabilities::per_channel_topics`] is true: the adapter's interest
//! routing holds in the node, while on the wire every node still reads every message of its
//! cluster (a topic per channel would cost a poll loop per channel).
//!
//! # Ordering and delivery
//! One partition: offsets give one total order, so one node's messages keep their order per
//! topic (publishes go out one at a time, each awaited). Each node polls with its own
//! consumer id (no commits: the cursor lives in the node), starting **at the end** of the
//! partition when it connects the first time. The cursor is an offset: a message is delivered
//! only when its offset is the next expected one or later ([`PollCursor::accept`]), so a
//! re-poll after an error never delivers twice. After a reconnect the node resumes at its own
//! cursor: what was published while it was away is still delivered, as far as retention
//! reaches.
//!
//! # Health and reconnect
//! A background task owns the client. Any failed poll (or a failed ping every
//! [`IggyTransportOptions::ping_interval`] while idle) marks the transport unhealthy and makes
//! it reconnect with exponential back-off (`reconnect_min` doubling to `reconnect_max`);
//! [`Transport::is_healthy`] is false meanwhile, and `publish` / `subscribe` fail at once.
//! A failed publish marks it unhealthy until the next successful poll.
//!
//! # Size limit
//! Iggy refuses payloads above [`MAX_PAYLOAD_SIZE`] (64 MB) and user headers above
//! [`MAX_USER_HEADERS_SIZE`]; [`IggyTransportOptions::max_message_size`] (default the payload
//! limit) is checked before anything is sent, with [`AdapterError::Malformed`] naming both
//! sizes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use iggy::prelude::{
    Client, Consumer, HeaderKey, HeaderValue, Identifier, IggyClient, IggyDuration, IggyExpiry,
    IggyMessage, MessageClient, Partitioning, PolledMessages, PollingStrategy, StreamClient,
    SystemClient, TopicClient, TopicCreateOptions, MAX_PAYLOAD_SIZE, MAX_USER_HEADERS_SIZE,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// The user header that carries the logical topic.
pub const TOPIC_HEADER: &str = "t";

/// Settings of an [`IggyTransport`].
#[derive(Clone, PartialEq, Eq)]
pub struct IggyTransportOptions {
    /// `iggy://user:password@host:port` (TCP).
    pub connection_string: String,
    /// The Iggy stream holding the cluster's topic.
    pub stream: String,
    /// The Iggy topic of the cluster (same on every node of a cluster).
    pub topic: String,
    /// Bound of connecting and of one stream/topic lookup (default 2 s).
    pub connect_timeout: Duration,
    /// Bound of one publish (default 1 s).
    pub publish_timeout: Duration,
    /// Pause between polls that found nothing (default 5 ms: the idle latency).
    pub poll_interval: Duration,
    /// Messages per poll (default 1,000).
    pub poll_batch: u32,
    /// Capacity of each subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// Largest payload accepted (default and maximum: Iggy's 64 MB).
    pub max_message_size: usize,
    /// Message expiry of the topic when this transport creates it (default 1 h).
    pub retention: Duration,
    /// First reconnection delay (default 100 ms), doubled after each failure …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
    /// How often an idle connection is pinged (default 1 s).
    pub ping_interval: Duration,
}

impl fmt::Debug for IggyTransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IggyTransportOptions")
            .field("connection_string", &redact(&self.connection_string))
            .field("stream", &self.stream)
            .field("topic", &self.topic)
            .field("poll_interval", &self.poll_interval)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

/// The connection string without its credentials.
fn redact(cs: &str) -> String {
    match (cs.split_once("://"), cs.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &cs[at + 1..]),
        _ => cs.to_owned(),
    }
}

impl Default for IggyTransportOptions {
    fn default() -> Self {
        IggyTransportOptions {
            connection_string: "iggy://iggy:iggy@127.0.0.1:8090".to_owned(),
            stream: "sockudo".to_owned(),
            topic: Self::topic_for_prefix("sockudo"),
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_millis(5),
            poll_batch: 1000,
            queue_capacity: 65_536,
            max_message_size: MAX_PAYLOAD_SIZE as usize,
            retention: Duration::from_secs(3600),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
        }
    }
}

impl IggyTransportOptions {
    /// The Iggy topic of the cluster with `prefix`.
    pub fn topic_for_prefix(prefix: &str) -> String {
        format!("{prefix}-sockudo")
    }

    /// Delay before reconnection attempt `failures` (0 = the first after a loss).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
        self.reconnect_min
            .saturating_mul(factor)
            .min(self.reconnect_max)
    }

    /// The message for `topic`: payload plus the `t` header, refused (before sending) when
    /// Iggy or the configured limit would refuse it.
    pub fn encode(&self, topic: &str, payload: Bytes) -> Result<IggyMessage, AdapterError> {
        let limit = self.max_message_size.min(MAX_PAYLOAD_SIZE as usize);
        if payload.len() > limit {
            return Err(AdapterError::Malformed(format!(
                "iggy publish on {topic}: message of {} bytes exceeds the limit of {limit} bytes",
                payload.len()
            )));
        }
        if topic.len() + 64 > MAX_USER_HEADERS_SIZE as usize {
            return Err(AdapterError::Malformed(format!(
                "iggy publish: topic name of {} bytes exceeds the header limit",
                topic.len()
            )));
        }
        let bad = |e: iggy::prelude::IggyError| {
            AdapterError::Malformed(format!("iggy message on {topic}: {e}"))
        };
        let key = HeaderKey::from_str(TOPIC_HEADER).map_err(bad)?;
        let value = HeaderValue::from_str(topic).map_err(bad)?;
        IggyMessage::builder()
            .payload(payload)
            .user_headers(BTreeMap::from([(key, value)]))
            .build()
            .map_err(bad)
    }
}

/// The logical topic and payload of a polled message (`None`: not one of ours).
pub fn decode(msg: &IggyMessage) -> Option<(String, Bytes)> {
    let key = HeaderKey::from_str(TOPIC_HEADER).ok()?;
    let value = msg.get_user_header(&key).ok()??;
    let topic = value.as_str().ok()?.to_owned();
    Some((topic, msg.payload.clone()))
}

/// Where a node reads the partition: the next offset it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollCursor {
    next: Option<u64>,
}

impl PollCursor {
    /// Whether the cursor has been placed (first connection done).
    pub fn is_placed(&self) -> bool {
        self.next.is_some()
    }

    /// Place the cursor at the end of the partition, from a `last` poll's answer: after its
    /// last message, or at 0 when the partition is empty. Kept when already placed (a
    /// reconnect resumes where the node was).
    pub fn place_at_end(&mut self, last: &PolledMessages) {
        if self.next.is_none() {
            self.next = Some(last.messages.last().map_or(0, |m| m.header.offset + 1));
        }
    }

    /// How to poll next.
    pub fn strategy(&self) -> PollingStrategy {
        PollingStrategy::offset(self.next.unwrap_or(0))
    }

    /// Whether the message at `offset` is new (then the cursor moves past it).
    pub fn accept(&mut self, offset: u64) -> bool {
        match self.next {
            Some(next) if offset < next => false,
            _ => {
                self.next = Some(offset + 1);
                true
            }
        }
    }
}

type Topics = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

#[derive(Default)]
struct Shared {
    up: AtomicBool,
    publish_ok: AtomicBool,
    dropped: AtomicU64,
    connections: AtomicU64,
    topics: Mutex<Topics>,
    client: Mutex<Option<Arc<IggyClient>>>,
}

/// Iggy [`Transport`]; see the module docs.
pub struct IggyTransport {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    opts: IggyTransportOptions,
    stream_id: Identifier,
    topic_id: Identifier,
}

impl fmt::Debug for IggyTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IggyTransport")
            .field("healthy", &self.is_healthy())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for IggyTransport {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("iggy {what}: {e}"))
}

/// Stream and topic identifiers (names).
pub fn identifiers(opts: &IggyTransportOptions) -> Result<(Identifier, Identifier), AdapterError> {
    let id = |what: &str, name: &str| {
        Identifier::named(name)
            .map_err(|e| AdapterError::Malformed(format!("iggy {what} name {name:?}: {e}")))
    };
    Ok((id("stream", &opts.stream)?, id("topic", &opts.topic)?))
}

async fn bounded<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, iggy::prelude::IggyError>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} ms", d.as_millis())),
    }
}

/// Connect, log in (credentials of the connection string) and make sure stream and topic
/// exist.
async fn connect_client(opts: &IggyTransportOptions) -> Result<IggyClient, String> {
    let (stream_id, topic_id) = identifiers(opts).map_err(|e| e.to_string())?;
    let t = opts.connect_timeout;
    let client = IggyClient::from_connection_string(&opts.connection_string)
        .map_err(|e| format!("connection string: {e}"))?;
    bounded(t, client.connect()).await?;
    if bounded(t, client.get_stream(&stream_id)).await?.is_none() {
        // Another node may create it at the same time: only a second miss is an error.
        if let Err(e) = bounded(t, client.create_stream(&opts.stream)).await {
            if bounded(t, client.get_stream(&stream_id)).await?.is_none() {
                return Err(format!("create stream {}: {e}", opts.stream));
            }
        }
    }
    if bounded(t, client.get_topic(&stream_id, &topic_id))
        .await?
        .is_none()
    {
        let create = TopicCreateOptions {
            partitions_count: Some(1),
            message_expiry: Some(IggyExpiry::ExpireDuration(IggyDuration::from(
                opts.retention,
            ))),
            ..TopicCreateOptions::default()
        };
        if let Err(e) = bounded(t, client.create_topic(&stream_id, &opts.topic, &create)).await {
            if bounded(t, client.get_topic(&stream_id, &topic_id))
                .await?
                .is_none()
            {
                return Err(format!("create topic {}: {e}", opts.topic));
            }
        }
    }
    Ok(client)
}

impl IggyTransport {
    /// Connect and start polling at the end of the partition. Fails when the server does not
    /// answer within the connect timeout. Must be called inside a Tokio runtime.
    pub async fn connect(opts: IggyTransportOptions) -> Result<Self, AdapterError> {
        let (stream_id, topic_id) = identifiers(&opts)?;
        let client = connect_client(&opts)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let shared = Arc::new(Shared::default());
        let client = Arc::new(client);
        let consumer = Consumer::new(
            Identifier::named(&format!("sockudo-{:016x}", rand::random::<u64>()))
                .map_err(|e| unavailable("consumer", e))?,
        );
        let mut cursor = PollCursor::default();
        let last = bounded(
            opts.connect_timeout,
            client.poll_messages(
                &stream_id,
                &topic_id,
                Some(0),
                &consumer,
                &PollingStrategy::last(),
                1,
                false,
            ),
        )
        .await
        .map_err(|e| unavailable("poll", e))?;
        cursor.place_at_end(&last);
        *shared.client.lock() = Some(client.clone());
        shared.up.store(true, Ordering::SeqCst);
        shared.publish_ok.store(true, Ordering::SeqCst);
        shared.connections.store(1, Ordering::SeqCst);
        let task = tokio::spawn(poll_task(
            client,
            consumer,
            cursor,
            shared.clone(),
            opts.clone(),
        ));
        Ok(IggyTransport {
            shared,
            task,
            opts,
            stream_id,
            topic_id,
        })
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Times the client (re)connected, the first time included.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transport for IggyTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        let mut message = [self.opts.encode(topic, payload)?];
        let client = self.shared.client.lock().clone();
        let Some(client) = client.filter(|_| self.is_healthy()) else {
            return Err(unavailable("publish", "not connected"));
        };
        let sent = bounded(
            self.opts.publish_timeout,
            client.send_messages(
                &self.stream_id,
                &self.topic_id,
                &Partitioning::partition_id(0),
                &mut message,
            ),
        )
        .await;
        sent.map(drop).map_err(|e| {
            self.shared.publish_ok.store(false, Ordering::SeqCst);
            unavailable("publish", e)
        })
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if !self.shared.up.load(Ordering::SeqCst) {
            return Err(unavailable("subscribe", "not connected"));
        }
        let (tx, rx) = mpsc::channel(self.opts.queue_capacity.max(1));
        self.shared
            .topics
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn capabilities(&self) -> TransportCapabilities {
        // Per logical topic, subscribing and dropping are local and free (see the module
        // docs): the adapter's interest routing holds, filtered in the node, not the broker.
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst) && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

/// Hand polled messages to their topics' queues (never waiting).
fn route(shared: &Shared, cursor: &mut PollCursor, polled: &PolledMessages) {
    let mut topics = shared.topics.lock();
    for m in &polled.messages {
        if !cursor.accept(m.header.offset) {
            continue;
        }
        let Some((topic, payload)) = decode(m) else {
            continue;
        };
        let Some(senders) = topics.get_mut(&topic) else {
            continue;
        };
        senders.retain(|tx| match tx.try_send(payload.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = shared.dropped.fetch_add(1, Ordering::Relaxed);
                if n % 1000 == 0 {
                    tracing::warn!(topic, dropped_total = n + 1, "iggy transport: queue full");
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if senders.is_empty() {
            topics.remove(&topic);
        }
    }
}

async fn poll_task(
    client: Arc<IggyClient>,
    consumer: Consumer,
    mut cursor: PollCursor,
    shared: Arc<Shared>,
    opts: IggyTransportOptions,
) {
    let Ok((stream_id, topic_id)) = identifiers(&opts) else {
        return;
    };
    let mut client = Some(client);
    let mut failures = 0u32;
    loop {
        if let Some(c) = client.take() {
            let mut last_ping = tokio::time::Instant::now();
            let reason = loop {
                let polled = bounded(
                    opts.connect_timeout,
                    c.poll_messages(
                        &stream_id,
                        &topic_id,
                        Some(0),
                        &consumer,
                        &cursor.strategy(),
                        opts.poll_batch.max(1),
                        false,
                    ),
                )
                .await;
                match polled {
                    Ok(polled) => {
                        shared.publish_ok.store(true, Ordering::SeqCst);
                        if polled.messages.is_empty() {
                            if last_ping.elapsed() >= opts.ping_interval {
                                last_ping = tokio::time::Instant::now();
                                if let Err(e) = bounded(opts.connect_timeout, c.ping()).await {
                                    break format!("ping failed: {e}");
                                }
                            }
                            tokio::time::sleep(opts.poll_interval).await;
                        } else {
                            route(&shared, &mut cursor, &polled);
                        }
                    }
                    Err(e) => break format!("poll failed: {e}"),
                }
            };
            shared.up.store(false, Ordering::SeqCst);
            *shared.client.lock() = None;
            tracing::warn!(reason = %reason, "iggy transport: connection lost; reconnecting");
            let _ = tokio::time::timeout(opts.connect_timeout, c.disconnect()).await;
            failures = 0;
        }
        tokio::time::sleep(opts.backoff(failures)).await;
        failures = failures.saturating_add(1);
        match connect_client(&opts).await {
            Ok(c) => {
                let c = Arc::new(c);
                *shared.client.lock() = Some(c.clone());
                shared.up.store(true, Ordering::SeqCst);
                shared.publish_ok.store(true, Ordering::SeqCst);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!("iggy transport: connection restored");
                client = Some(c);
            }
            Err(e) => tracing::debug!(error = %e, "iggy transport: reconnect failed; retrying"),
        }
    }
}

#[cfg(test)]
#[path = "iggy_transport_tests.rs"]
mod tests;
