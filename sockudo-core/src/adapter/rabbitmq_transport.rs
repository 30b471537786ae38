//! [`Transport`] over RabbitMQ (AMQP 0-9-1; feature `rabbitmq`).
//!
//! # Topology
//! One **topic exchange** per cluster ([`RabbitmqTransportOptions::exchange`]; the server names
//! it after `CLUSTER_PREFIX`), non-durable, declared by every node. A message's routing key is
//! its topic name: topic names are `.`-separated words of `[A-Za-z0-9_-]` (see
//! [`super::names`]), so they never hold the AMQP wildcards `*` and `#` and a binding key
//! equal to the name matches exactly that name. Routing keys are short strings (at most 255
//! bytes): a longer topic name is shortened deterministically (its first 180 bytes, `.h`, and
//! the SHA-256 of the whole name in hex), identically on every node.
//!
//! Each node owns **one exclusive, auto-delete, server-named queue** with one consumer
//! (no acknowledgements: the broker hands a message over once and forgets it).
//! [`Transport::subscribe`] binds that queue to the exchange with the topic's routing key and
//! returns once the broker answered `Queue.BindOk`; when every stream of a topic is dropped
//! the binding is removed (`Queue.Unbind`, at the next message of that topic or the next
//! health check). Bindings are cheap, so this transport declares
//! [`TransportCapabilities::per_channel_topics`]: a node receives only the channels it has
//! subscribers for (interest routing).
//!
//! # Guarantees
//! - `publish`: the message goes out on one channel in confirm mode, and `Ok` means the
//!   broker **confirmed** it (`Basic.Ack`) within [`RabbitmqTransportOptions::publish_timeout`],
//!   i.e. it was routed to every queue bound at that moment. A `Basic.Nack`, a timeout, or no
//!   connection is an `Err` (the message may not have left this node). Publishes issued one
//!   after another by one caller go out on that one channel and reach each queue in that order;
//!   each queue is delivered to its single consumer in order, so order holds per publisher and
//!   topic, and each subscriber gets a message at most once.
//! - Size: a payload over [`RabbitmqTransportOptions::max_message_bytes`] (default 128 MiB,
//!   RabbitMQ's default `max_message_size` since 3.8) is refused **before** publishing with
//!   [`AdapterError::Malformed`] naming both sizes (the broker would otherwise close the
//!   channel). Set it to the broker's `max_message_size` when that was lowered.
//! - The node's queue at the broker is bounded too
//!   ([`RabbitmqTransportOptions::broker_backlog`] messages, `x-max-length`, oldest dropped):
//!   a node that stalls must not fill the broker's memory, whose alarm would block every
//!   node's publishing.
//! - Each subscription is a bounded queue ([`RabbitmqTransportOptions::queue_capacity`]): the
//!   consumer never waits for a slow stream; when a stream's queue is full the message is
//!   dropped for that stream and counted ([`RabbitmqTransport::dropped`]).
//!
//! # Reconnection and health
//! A background task owns the connection. It notices a lost connection when the consumer
//! stream fails or ends, or when the connection or a channel is found closed at a check every
//! [`RabbitmqTransportOptions::check_interval`] (AMQP heartbeats, every
//! [`RabbitmqTransportOptions::heartbeat`], detect a silent peer). From then on
//! [`Transport::is_healthy`] is false, `publish` fails at once and `subscribe` is refused (the
//! caller must not be told it receives the topic). The task reconnects with exponential
//! back-off ([`RabbitmqTransportOptions::reconnect_min`] doubling up to `reconnect_max`),
//! declares the exchange and a new queue again, re-binds every live topic and only then turns
//! healthy; the streams handed out before simply resume. While the broker blocks the
//! connection's publishing (`Connection.Blocked`: a memory or disk alarm; RabbitMQ blocks a
//! connection at its first publish after the alarm, which then fails by its timeout), the
//! transport is unhealthy too and `publish` fails at once, rather than each publish waiting
//! out its timeout; it turns healthy again when the broker unblocks the connection. Messages published while a node was
//! disconnected are lost for it (its queue went away with its connection); the cluster
//! adapter copes through readiness and liveness, V2 clients through history.
//!
//! # TLS
//! This build speaks plain `amqp://` only (lapin without its TLS stacks, to keep the build
//! light); an `amqps://` URL is refused at start with a message saying so.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::rabbitmq_link::{self, Command};
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const RABBITMQ_DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// The longest AMQP routing key (a short string).
const MAX_ROUTING_KEY: usize = 255;

/// Settings of a [`RabbitmqTransport`].
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitmqTransportOptions {
    /// `amqp://user:pass@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`).
    pub url: String,
    /// The topic exchange of this cluster (default `sockudo`).
    pub exchange: String,
    /// Largest payload published (default [`RABBITMQ_DEFAULT_MAX_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// Upper bound of connecting and of each topology operation (default 5 s).
    pub connect_timeout: Duration,
    /// Upper bound of one publish until the broker's confirmation (default 2 s).
    pub publish_timeout: Duration,
    /// Capacity of each subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// First reconnection delay (default 100 ms), doubled after each failed attempt …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
    /// How often the task checks its connection and channels (default 250 ms).
    pub check_interval: Duration,
    /// AMQP heartbeat asked for when the URL sets none (default 10 s).
    pub heartbeat: Duration,
    /// Most messages the broker holds in this node's queue when the node does not keep up
    /// (`x-max-length`, default 1,000,000; the oldest are dropped beyond it).
    pub broker_backlog: u32,
}

impl fmt::Debug for RabbitmqTransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitmqTransportOptions")
            .field("url", &redact(&self.url))
            .field("exchange", &self.exchange)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("check_interval", &self.check_interval)
            .field("heartbeat", &self.heartbeat)
            .field("broker_backlog", &self.broker_backlog)
            .finish()
    }
}

impl Default for RabbitmqTransportOptions {
    fn default() -> Self {
        RabbitmqTransportOptions {
            url: "amqp://127.0.0.1:5672/%2f".to_owned(),
            exchange: "sockudo".to_owned(),
            max_message_bytes: RABBITMQ_DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            check_interval: Duration::from_millis(250),
            heartbeat: Duration::from_secs(10),
            broker_backlog: 1_000_000,
        }
    }
}

/// `scheme://***@host…` when the URL carries credentials.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// Parse and check `url` (plain `amqp://` only in this build); fill in the heartbeat and the
/// connection timeout when the URL sets none.
pub(super) fn parse_url(opts: &RabbitmqTransportOptions) -> Result<AMQPUri, AdapterError> {
    let shown = redact(&opts.url);
    let mut uri: AMQPUri = opts
        .url
        .parse()
        .map_err(|e| AdapterError::Malformed(format!("RABBITMQ_URL {shown:?}: {e}")))?;
    if uri.scheme == AMQPScheme::AMQPS {
        return Err(AdapterError::Malformed(format!(
            "RABBITMQ_URL {shown:?}: amqps:// (TLS) is not supported by this build; use amqp:// \
             (e.g. through a local TLS tunnel)"
        )));
    }
    if !opts.url.starts_with("amqp://") {
        return Err(AdapterError::Malformed(format!(
            "RABBITMQ_URL {shown:?} must start with amqp://"
        )));
    }
    if uri.query.heartbeat.is_none() {
        let secs = opts.heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
        uri.query.heartbeat = u16::try_from(secs).ok();
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = u64::try_from(opts.connect_timeout.as_millis()).ok();
    }
    Ok(uri)
}

/// The AMQP routing key of `topic` (see the module docs).
pub fn routing_key(topic: &str) -> String {
    if topic.len() <= MAX_ROUTING_KEY {
        return topic.to_owned();
    }
    let mut cut = 180;
    while !topic.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(topic.as_bytes());
    let mut key = String::with_capacity(cut + 2 + 64);
    key.push_str(&topic[..cut]);
    key.push_str(".h");
    for b in digest {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Counters and the live publishing channel, shared with the connection task.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The confirm-mode channel of the live connection; `None` while disconnected.
    pub publisher: Mutex<Option<Channel>>,
    pub healthy: AtomicBool,
    /// The broker blocked this connection's publishing (a memory or disk alarm).
    pub blocked: AtomicBool,
    pub dropped: AtomicU64,
    pub connections: AtomicU64,
}

/// RabbitMQ [`Transport`]; see the module docs.
pub struct RabbitmqTransport {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    opts: RabbitmqTransportOptions,
}

impl fmt::Debug for RabbitmqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitmqTransport")
            .field("healthy", &self.is_healthy())
            .field("dropped", &self.dropped())
            .field("connections", &self.connections())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for RabbitmqTransport {
    fn drop(&mut self) {
        // Ends the connection task (closing the connection, which deletes the queue) and
        // drops every stream's sender: the streams end.
        self.task.abort();
    }
}

pub(super) fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("rabbitmq {what}: {e}"))
}

impl RabbitmqTransport {
    /// Connect to `url` with the default options.
    pub async fn connect(url: &str) -> Result<Self, AdapterError> {
        Self::connect_with(RabbitmqTransportOptions {
            url: url.to_owned(),
            ..RabbitmqTransportOptions::default()
        })
        .await
    }

    /// Connect and declare the topology. Fails when the URL is refused or the broker does not
    /// answer within the connect timeout (no silent fallback). Must be called inside a Tokio
    /// runtime.
    pub async fn connect_with(opts: RabbitmqTransportOptions) -> Result<Self, AdapterError> {
        if opts.exchange.is_empty() || opts.exchange.len() > MAX_ROUTING_KEY {
            return Err(AdapterError::Malformed(
                "rabbitmq exchange name must be 1 to 255 bytes long".into(),
            ));
        }
        let uri = parse_url(&opts)?;
        let link = rabbitmq_link::open(&uri, &opts, std::iter::empty())
            .await
            .map_err(|e| unavailable("connect", format!("{}: {e}", redact(&opts.url))))?;
        let shared = Arc::new(Shared::default());
        // Up from the start (before the task runs: the cluster adapter subscribes at once).
        *shared.publisher.lock() = Some(link.publisher.clone());
        shared.connections.store(1, Ordering::Relaxed);
        shared.healthy.store(true, Ordering::SeqCst);
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(rabbitmq_link::run(
            link,
            uri,
            shared.clone(),
            rx,
            opts.clone(),
        ));
        Ok(RabbitmqTransport {
            shared,
            commands,
            task,
            opts,
        })
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Times the connection was (re-)established, the first included.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &RabbitmqTransportOptions {
        &self.opts
    }
}

#[async_trait]
impl Transport for RabbitmqTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        if payload.len() > self.opts.max_message_bytes {
            return Err(AdapterError::Malformed(format!(
                "rabbitmq publish on {topic}: message of {} bytes exceeds the broker's limit of \
                 {} bytes (RABBITMQ_MAX_MESSAGE_BYTES)",
                payload.len(),
                self.opts.max_message_bytes
            )));
        }
        if self.shared.blocked.load(Ordering::SeqCst) {
            return Err(unavailable(
                "publish",
                "the broker blocks publishing (memory or disk alarm)",
            ));
        }
        let channel = match &*self.shared.publisher.lock() {
            Some(c) if self.shared.healthy.load(Ordering::SeqCst) => c.clone(),
            _ => return Err(unavailable("publish", "not connected")),
        };
        let key = routing_key(topic);
        let exchange = self.opts.exchange.as_str();
        let confirmed = async {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await?;
            confirm.await
        };
        match tokio::time::timeout(self.opts.publish_timeout, confirmed).await {
            Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(unavailable("publish", "the broker refused it")),
            Ok(Err(e)) => Err(unavailable("publish", e)),
            Err(_) => Err(unavailable(
                "publish",
                format!(
                    "no confirmation within {} ms",
                    self.opts.publish_timeout.as_millis()
                ),
            )),
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if !self.is_healthy() {
            return Err(unavailable("subscribe", "not connected"));
        }
        let (tx, rx) = mpsc::channel(self.opts.queue_capacity.max(1));
        let (done, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                key: routing_key(topic),
                tx,
                done,
            })
            .map_err(|_| unavailable("subscribe", "connection task stopped"))?;
        match tokio::time::timeout(self.opts.connect_timeout, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(Box::pin(ReceiverStream::new(rx))),
            Ok(Ok(Err(e))) => Err(unavailable("subscribe", e)),
            Ok(Err(_)) => Err(unavailable("subscribe", "connection task stopped")),
            Err(_) => Err(unavailable(
                "subscribe",
                "the broker did not confirm in time",
            )),
        }
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst) && !self.shared.blocked.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_fit_amqp_and_stay_distinct() {
        assert_eq!(routing_key("p.ch.app.c"), "p.ch.app.c");
        let long_a = format!("p.ch.app.{}", "a".repeat(300));
        let long_b = format!("p.ch.app.{}b", "a".repeat(299));
        let (ka, kb) = (routing_key(&long_a), routing_key(&long_b));
        assert!(ka.len() <= MAX_ROUTING_KEY && kb.len() <= MAX_ROUTING_KEY);
        assert_ne!(ka, kb);
        assert_eq!(ka, routing_key(&long_a), "deterministic");
        assert!(!ka.contains('*') && !ka.contains('#'));
    }

    #[test]
    fn urls_are_checked_and_secrets_hidden() {
        let opts = |url: &str| RabbitmqTransportOptions {
            url: url.to_owned(),
            ..RabbitmqTransportOptions::default()
        };
        let uri = parse_url(&opts("amqp://u:pw@h:5673/%2f")).unwrap();
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.query.heartbeat, Some(10));
        let tls = parse_url(&opts("amqps://u:pw@h/v"))
            .unwrap_err()
            .to_string();
        assert!(tls.contains("amqps://") && !tls.contains("pw"), "{tls}");
        assert!(parse_url(&opts("http://h:1")).is_err());
        let shown = format!("{:?}", opts("amqp://u:secret-pw@h:5672/v"));
        assert!(
            !shown.contains("secret-pw") && shown.contains("h:5672"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_before_publishing() {
        // Nothing listens on port 1: the size check comes first anyway.
        let (commands, _rx) = mpsc::unbounded_channel();
        let t = RabbitmqTransport {
            shared: Arc::default(),
            commands,
            task: tokio::spawn(async {}),
            opts: RabbitmqTransportOptions {
                max_message_bytes: 4,
                ..RabbitmqTransportOptions::default()
            },
        };
        let err = t
            .publish("t", Bytes::from_static(b"12345"))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Malformed(ref m) if m.contains("5 bytes")));
        assert!(matches!(
            t.publish("t", Bytes::from_static(b"1234")).await,
            Err(AdapterError::Unavailable(_))
        ));
    }
}
