//! [`Transport`] over Apache Pulsar's binary protocol (feature `pulsar`).
//!
//! # Topics and interest routing
//! Every logical topic of one cluster travels on **one** Pulsar topic
//! ([`PulsarTransportOptions::topic`], by default `persistent://public/default/{prefix}-sockudo`
//! from the cluster prefix; see [`PulsarTransportOptions::topic_for_prefix`]). The logical topic
//! (`P.broadcast`, `P.ch.{app}.{channel}`, `P.responses.n1`, …) rides in the message property
//! `t`; each node reads the whole Pulsar topic and routes locally to the streams of that
//! logical topic (a message for a topic nobody on the node subscribed is dropped on arrival).
//! Subscribing to and dropping one logical topic is therefore a local map update, free and
//! immediate, so [`TransportCapabilities::per_channel_topics`] is **true**: the cluster
//! adapter's interest routing holds (a node's adapter sees only the channels it watches), but
//! the filtering happens in the node, not in the broker: every node still receives every
//! message of its cluster on the wire. A Pulsar consumer per channel would move the filtering
//! to the broker at the price of a topic lookup and a subscribe round trip on every first
//! subscriber of a channel, and a producer per channel on every publisher; not done.

//! # Subscription, ordering, delivery
//! Each transport has one producer (no batching) and one consumer with an **Exclusive,
//! non-durable** subscription under a unique name, starting at the latest message. Non-durable:
//! the broker forgets the subscription when the consumer goes away, so a node that dies leaves
//! no cursor behind that would retain the topic's backlog. Publishes are handed to the producer
//! one at a time under a lock, so one node's messages keep their order per topic; `Ok` means
//! the broker persisted the message (send receipt) within
//! [`PulsarTransportOptions::publish_timeout`]. Delivery is at most once per subscriber: the
//! consumer drops any message whose id is not above the last one it delivered (a redelivery
//! after an internal reconnect of the client), counted in [`PulsarTransport::duplicates`].
//! Messages are acknowledged cumulatively (every 256 messages and on each health check).
//!
//! `subscribe` registers the stream with the consumer that is already subscribed at the
//! broker, and is refused while the transport is unhealthy (the broker could not confirm it):
//! once it returns, every message published on the topic afterwards reaches the stream while
//! the transport is up.
//!
//! # Queues and overflow
//! Each stream is a bounded queue of [`PulsarTransportOptions::queue_capacity`] messages. The
//! reader never waits for a slow stream: a message that finds the queue full is dropped for that
//! stream and counted in [`PulsarTransport::dropped`] (logged on the first and every 1,000th).
//!
//! # Reconnect and health
//! A background task owns the client and the consumer. A health check every
//! [`PulsarTransportOptions::ping_interval`] pings the consumer's connection (and the
//! producer's after a failed publish). When the consumer's stream fails or a ping does, the
//! task drops client, producer and consumer and builds them again with exponential back-off
//! (`reconnect_min` doubling to `reconnect_max`); the new subscription starts at the latest
//! message, so messages published while a node was away are lost for it (the cluster adapter
//! copes through readiness and liveness, V2 clients through continuity).
//! [`Transport::is_healthy`] is false from the failure until the new consumer and producer
//! are up, and after a failed publish until a ping of the producer's connection succeeds.
//! Publishes and subscriptions fail at once while it is false.
//!
//! # Size limit
//! Pulsar brokers refuse frames above their `maxMessageSize` (5 MiB by default) and close the
//! connection. `publish` refuses, before sending, a message whose payload plus logical topic
//! plus a reserve for the metadata ([`METADATA_RESERVE`]) exceeds
//! [`PulsarTransportOptions::max_message_size`], with [`AdapterError::Malformed`] naming both
//! sizes; nothing is dropped silently.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use pulsar::consumer::ConsumerOptions;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::message::proto::MessageIdData;
use pulsar::{
    Authentication, ConnectionRetryOptions, Consumer, OperationRetryOptions, Producer, Pulsar,
    TokioExecutor,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// The message property that carries the logical topic.
pub const TOPIC_PROPERTY: &str = "t";

/// Bytes kept free under the broker's limit for the message metadata (producer name,
/// sequence id, publish time, the `t` property's key): the metadata of a Sockudo message is
/// well under 1 KiB besides the topic itself, which is counted separately.
pub const METADATA_RESERVE: usize = 1024;

/// Pulsar's default `maxMessageSize` (5 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;

/// Messages between two cumulative acknowledgements.
const ACK_EVERY: u32 = 256;

/// Settings of a [`PulsarTransport`].
#[derive(Clone, PartialEq, Eq)]
pub struct PulsarTransportOptions {
    /// Broker service URL, `pulsar://host:port` (or `pulsar+ssl://`).
    pub url: String,
    /// Token for the broker's token authentication, when it requires one.
    pub token: Option<String>,
    /// The Pulsar topic that carries the cluster's traffic (all nodes of one cluster must use
    /// the same; distinct clusters sharing a broker need distinct topics).
    pub topic: String,
    /// Upper bound of connecting (client, producer, consumer at start and on each attempt)
    /// and of a health-check ping (default 2 s). A broker that does not answer in time at
    /// start fails the start.
    pub connect_timeout: Duration,
    /// Upper bound of one publish, until the broker's receipt (default 1 s).
    pub publish_timeout: Duration,
    /// Capacity of each subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// Largest message the broker accepts (its `maxMessageSize`; default 5 MiB).
    pub max_message_size: usize,
    /// First reconnection delay (default 100 ms), doubled after each failed attempt …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
    /// How often the connection is checked (default 1 s).
    pub ping_interval: Duration,
}

impl fmt::Debug for PulsarTransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulsarTransportOptions")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("topic", &self.topic)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_message_size", &self.max_message_size)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("ping_interval", &self.ping_interval)
            .finish()
    }
}

impl Default for PulsarTransportOptions {
    fn default() -> Self {
        PulsarTransportOptions {
            url: "pulsar://127.0.0.1:6650".to_owned(),
            token: None,
            topic: Self::topic_for_prefix("sockudo"),
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(1),
            queue_capacity: 65_536,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
        }
    }
}

impl PulsarTransportOptions {
    /// The Pulsar topic of the cluster with `prefix` (`[A-Za-z0-9._-]`, all valid in Pulsar
    /// topic names): `persistent://public/default/{prefix}-sockudo`.
    pub fn topic_for_prefix(prefix: &str) -> String {
        format!("persistent://public/default/{prefix}-sockudo")
    }

    /// Refuse a message that the broker would refuse (see the module docs).
    pub fn check_size(&self, topic: &str, payload_len: usize) -> Result<(), AdapterError> {
        let size = payload_len
            .saturating_add(topic.len())
            .saturating_add(METADATA_RESERVE);
        if size > self.max_message_size {
            return Err(AdapterError::Malformed(format!(
                "pulsar publish on {topic}: message of {payload_len} bytes (+{} of topic and \
                 metadata) exceeds the broker's limit of {} bytes",
                size - payload_len,
                self.max_message_size
            )));
        }
        Ok(())
    }

    /// Delay before reconnection attempt `failures` (0 = the first after a loss).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
        self.reconnect_min
            .saturating_mul(factor)
            .min(self.reconnect_max)
    }
}

/// Id order of Pulsar messages on one (non-partitioned) topic.
pub(crate) fn id_key(id: &MessageIdData) -> (u64, u64, i32) {
    (id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1))
}

/// The logical topic of a received message (`None`: not one of ours).
pub(crate) fn logical_topic(props: &[pulsar::message::proto::KeyValue]) -> Option<&str> {
    props
        .iter()
        .find(|kv| kv.key == TOPIC_PROPERTY)
        .map(|kv| kv.value.as_str())
}

/// Each logical topic's subscription queues.
type Topics = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

/// Hand one message to every queue of its topic (never waiting: a full queue drops it).
fn route(topics: &mut Topics, dropped: &AtomicU64, topic: &str, payload: Bytes) {
    let Some(senders) = topics.get_mut(topic) else {
        return;
    };
    senders.retain(|tx| match tx.try_send(payload.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    topic,
                    dropped_total = n + 1,
                    "pulsar transport: subscriber queue full, message dropped"
                );
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if senders.is_empty() {
        topics.remove(topic);
    }
}

/// Forget the queues whose streams were dropped.
fn prune(topics: &mut Topics) {
    topics.retain(|_, senders| {
        senders.retain(|tx| !tx.is_closed());
        !senders.is_empty()
    });
}

#[derive(Default)]
struct Shared {
    consumer_up: AtomicBool,
    publish_ok: AtomicBool,
    dropped: AtomicU64,
    duplicates: AtomicU64,
    connections: AtomicU64,
    topics: Mutex<Topics>,
    producer: tokio::sync::Mutex<Option<Producer<TokioExecutor>>>,
}

/// Pulsar [`Transport`]; see the module docs.
pub struct PulsarTransport {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    opts: PulsarTransportOptions,
}

impl fmt::Debug for PulsarTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulsarTransport")
            .field("healthy", &self.is_healthy())
            .field("dropped", &self.dropped())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for PulsarTransport {
    fn drop(&mut self) {
        // Ends the consumer task (dropping the consumer closes the non-durable subscription
        // and every queue sender: the streams end).
        self.task.abort();
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("pulsar {what}: {e}"))
}

type Client = Pulsar<TokioExecutor>;
type Sub = Consumer<Vec<u8>, TokioExecutor>;

/// Build client, producer and consumer, each step bounded by the connect timeout.
async fn connect_all(
    opts: &PulsarTransportOptions,
) -> Result<(Client, Producer<TokioExecutor>, Sub), String> {
    let t = opts.connect_timeout;
    let mut builder = Pulsar::builder(opts.url.clone(), TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(50),
            max_backoff: opts.reconnect_max,
            max_retries: 1,
            connection_timeout: t,
            keep_alive: opts.ping_interval.max(Duration::from_millis(500)),
            connection_max_idle: Duration::from_secs(120),
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: t,
            retry_delay: Duration::from_millis(100),
            max_retries: Some(1),
        });
    if let Some(token) = &opts.token {
        builder = builder.with_auth(Authentication {
            name: "token".to_owned(),
            data: token.clone().into_bytes(),
        });
    }
    let bounded = |what: &'static str| move |_| format!("{what} timed out after {t:?}");
    let client = tokio::time::timeout(t, builder.build())
        .await
        .map_err(bounded("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
    let name = format!("sockudo-{:016x}", rand::random::<u64>());
    let producer = tokio::time::timeout(
        t,
        client
            .producer()
            .with_topic(opts.topic.clone())
            .with_name(name.clone())
            .build(),
    )
    .await
    .map_err(bounded("producer"))?
    .map_err(|e| format!("producer: {e}"))?;
    let consumer = tokio::time::timeout(
        t,
        client
            .consumer()
            .with_topic(opts.topic.clone())
            .with_subscription(name.clone())
            .with_consumer_name(name)
            .with_subscription_type(SubType::Exclusive)
            .with_options(ConsumerOptions::default().durable(false))
            .build::<Vec<u8>>(),
    )
    .await
    .map_err(bounded("consumer"))?
    .map_err(|e| format!("consumer: {e}"))?;
    Ok((client, producer, consumer))
}

impl PulsarTransport {
    /// Connect (client, producer, consumer). Fails when the broker does not answer within the
    /// connect timeout (no silent fallback). Must be called inside a Tokio runtime.
    pub async fn connect(opts: PulsarTransportOptions) -> Result<Self, AdapterError> {
        if !(opts.url.starts_with("pulsar://") || opts.url.starts_with("pulsar+ssl://")) {
            return Err(AdapterError::Malformed(format!(
                "PULSAR_URL must start with pulsar:// or pulsar+ssl://, got {:?}",
                opts.url
            )));
        }
        let (client, producer, consumer) = connect_all(&opts)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let shared = Arc::new(Shared::default());
        *shared.producer.lock().await = Some(producer);
        shared.publish_ok.store(true, Ordering::SeqCst);
        shared.consumer_up.store(true, Ordering::SeqCst);
        shared.connections.store(1, Ordering::SeqCst);
        let task = tokio::spawn(consumer_task(
            client,
            consumer,
            shared.clone(),
            opts.clone(),
        ));
        Ok(PulsarTransport { shared, task, opts })
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Redelivered messages dropped (their id was not above the last delivered one).
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Times client, producer and consumer were (re-)established, the first time included.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &PulsarTransportOptions {
        &self.opts
    }
}

#[async_trait]
impl Transport for PulsarTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        self.opts.check_size(topic, payload.len())?;
        if !self.shared.consumer_up.load(Ordering::SeqCst) {
            return Err(unavailable("publish", "not connected"));
        }
        let t = self.opts.publish_timeout;
        let message = pulsar::producer::Message {
            payload: payload.to_vec(),
            properties: HashMap::from([(TOPIC_PROPERTY.to_owned(), topic.to_owned())]),
            ..Default::default()
        };
        let sent = tokio::time::timeout(t, async {
            let mut slot = self.shared.producer.lock().await;
            let producer = slot.as_mut().ok_or("not connected".to_owned())?;
            // Handed over under the lock: one node's messages keep their order.
            let receipt = producer
                .send_non_blocking(message)
                .await
                .map_err(|e| e.to_string())?;
            drop(slot);
            receipt.await.map(drop).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no receipt within {} ms", t.as_millis())));
        match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.publish_ok.store(false, Ordering::SeqCst);
                Err(unavailable("publish", e))
            }
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if !self.is_healthy() {
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
        self.shared.consumer_up.load(Ordering::SeqCst)
            && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

/// Why a session ended.
async fn run_session(consumer: &mut Sub, shared: &Shared, opts: &PulsarTransportOptions) -> String {
    let topic = opts.topic.clone();
    let mut last: Option<(u64, u64, i32)> = None;
    let mut unacked: Option<MessageIdData> = None;
    let mut since_ack = 0u32;
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = consumer.next() => match msg {
                Some(Ok(msg)) => {
                    let id = msg.message_id().clone();
                    let key = id_key(&id);
                    if last.is_some_and(|l| key <= l) {
                        shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    last = Some(key);
                    if let Some(logical) = logical_topic(&msg.payload.metadata.properties) {
                        let logical = logical.to_owned();
                        let mut topics = shared.topics.lock();
                        route(&mut topics, &shared.dropped, &logical, Bytes::from(msg.payload.data));
                    }
                    unacked = Some(id);
                    since_ack += 1;
                    if since_ack >= ACK_EVERY {
                        since_ack = 0;
                        if let Some(id) = unacked.take() {
                            if let Err(e) = consumer.cumulative_ack_with_id(&topic, id).await {
                                return format!("ack failed: {e}");
                            }
                        }
                    }
                }
                Some(Err(e)) => return format!("consumer error: {e}"),
                None => return "consumer stream ended".to_owned(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(opts.connect_timeout, consumer.check_connection()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return "ping timed out".to_owned(),
                }
                if let Some(id) = unacked.take() {
                    since_ack = 0;
                    if let Err(e) = consumer.cumulative_ack_with_id(&topic, id).await {
                        return format!("ack failed: {e}");
                    }
                }
                prune(&mut shared.topics.lock());
                if !shared.publish_ok.load(Ordering::SeqCst) {
                    let slot = shared.producer.lock().await;
                    if let Some(p) = slot.as_ref() {
                        match tokio::time::timeout(opts.connect_timeout, p.check_connection()).await {
                            Ok(Ok(())) => shared.publish_ok.store(true, Ordering::SeqCst),
                            _ => return "producer connection lost".to_owned(),
                        }
                    }
                }
            }
        }
    }
}

async fn consumer_task(
    client: Client,
    consumer: Sub,
    shared: Arc<Shared>,
    opts: PulsarTransportOptions,
) {
    let mut session = Some((client, consumer));
    let mut failures = 0u32;
    loop {
        if let Some((client, mut consumer)) = session.take() {
            let reason = run_session(&mut consumer, &shared, &opts).await;
            shared.consumer_up.store(false, Ordering::SeqCst);
            shared.publish_ok.store(false, Ordering::SeqCst);
            *shared.producer.lock().await = None;
            tracing::warn!(reason = %reason, "pulsar transport: connection lost; reconnecting");
            drop(consumer);
            drop(client);
            failures = 0;
        }
        tokio::time::sleep(opts.backoff(failures)).await;
        failures = failures.saturating_add(1);
        match connect_all(&opts).await {
            Ok((client, producer, consumer)) => {
                *shared.producer.lock().await = Some(producer);
                shared.publish_ok.store(true, Ordering::SeqCst);
                shared.consumer_up.store(true, Ordering::SeqCst);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!("pulsar transport: connection restored");
                session = Some((client, consumer));
            }
            Err(e) => {
                tracing::debug!(error = %e, "pulsar transport: reconnect failed; retrying");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pulsar::message::proto::KeyValue;

    #[test]
    fn size_limit_is_checked_before_publish() {
        let opts = PulsarTransportOptions {
            max_message_size: 10_000,
            ..Default::default()
        };
        let topic = "p.broadcast";
        let fits = 10_000 - METADATA_RESERVE - topic.len();
        assert!(opts.check_size(topic, fits).is_ok());
        let err = opts.check_size(topic, fits + 1).unwrap_err();
        assert!(
            matches!(&err, AdapterError::Malformed(m) if m.contains("10000")),
            "{err}"
        );
        assert!(PulsarTransportOptions::default()
            .check_size(topic, 5 * 1024 * 1024)
            .is_err());
        assert!(PulsarTransportOptions::default()
            .check_size(topic, 4 * 1024 * 1024)
            .is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let opts = PulsarTransportOptions::default();
        assert_eq!(opts.backoff(0), Duration::from_millis(100));
        assert_eq!(opts.backoff(1), Duration::from_millis(200));
        assert_eq!(opts.backoff(4), Duration::from_millis(1600));
        assert_eq!(opts.backoff(5), Duration::from_secs(2));
        assert_eq!(opts.backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn topic_names_and_properties() {
        assert_eq!(
            PulsarTransportOptions::topic_for_prefix("a.b-c_1"),
            "persistent://public/default/a.b-c_1-sockudo"
        );
        let props = vec![
            KeyValue {
                key: "x".into(),
                value: "y".into(),
            },
            KeyValue {
                key: TOPIC_PROPERTY.into(),
                value: "p.ch.app.c".into(),
            },
        ];
        assert_eq!(logical_topic(&props), Some("p.ch.app.c"));
        assert_eq!(logical_topic(&props[..1]), None);
        let id = |l, e, b| MessageIdData {
            ledger_id: l,
            entry_id: e,
            batch_index: b,
            ..Default::default()
        };
        assert!(id_key(&id(1, 5, None)) < id_key(&id(1, 6, None)));
        assert!(id_key(&id(1, 9, None)) < id_key(&id(2, 0, None)));
        assert!(id_key(&id(1, 5, None)) < id_key(&id(1, 5, Some(0))));
    }

    #[test]
    fn debug_hides_the_token() {
        let opts = PulsarTransportOptions {
            token: Some("secret-token".into()),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("secret-token") && shown.contains("***"));
    }
}
