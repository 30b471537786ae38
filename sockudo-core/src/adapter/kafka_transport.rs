//! [`Transport`] over the Kafka API (feature `kafka`).
//!
//! # Client
//! [`rskafka`] 0.6 (pure Rust, no consumer groups), built without compression codecs: the
//! feature adds 16 crates to the lock file (rskafka, rsasl and its SCRAM/stringprep helpers,
//! crc32c, chrono without its clock, an older rand/thiserror), no C code and no build tool.
//! `rdkafka` 0.39 was not chosen: it builds its bundled librdkafka with make+gcc (minutes of
//! C compilation on this 2-core machine, and a C toolchain in every build), and Debian's
//! librdkafka is too old for its `dynamic-linking`. (On the shared 2-core build machine the
//! whole `sockudo-core --features kafka` test build took about 3.5 minutes, most of it the
//! crates every feature shares; rskafka itself was not timed alone.) Consumer groups are not
//! needed: every node reads every partition.
//!
//! # Layout
//! One Kafka topic per cluster ([`KafkaTransportOptions::topic`], the server derives it from
//! `CLUSTER_PREFIX`), created at start when missing with
//! [`KafkaTransportOptions::partitions`] partitions (default 4, replication factor
//! [`KafkaTransportOptions::replication_factor`], default 1: create the topic beforehand for
//! other settings; an existing topic is used as it is). Each message is one record whose
//! **key is the logical topic** (`P.broadcast`, `P.heartbeat`, …) and whose value is the
//! payload. The partition is chosen from the key (FNV-1a modulo the partition count), so one
//! logical topic keeps its order in one partition.
//!
//! # Interest routing
//! None at the broker: every node consumes every partition of the topic (all the cluster's
//! traffic crosses the network to every node) and routes records to subscriptions by their
//! key, locally. Subscribing to and dropping a logical topic is therefore only a local map
//! update, which is what [`TransportCapabilities::per_channel_topics`] asks ("cheap"), so
//! the transport declares it: the cluster adapter then publishes each channel's broadcasts
//! under the channel's own key (spreading channels over the partitions, each channel in
//! order in one), and a node's adapter decodes only the channels it has subscribers for.
//! Network and broker load are those of "every node receives everything".

//! # Guarantees
//! - At start, after the topic exists, the transport asks each partition for its end offset
//!   and starts one consumer per partition there (no history is replayed). `connect`
//!   returns only after that, so [`Transport::subscribe`] only registers a local queue: a
//!   message published after `subscribe` returned lies behind the consumers' positions and
//!   reaches the new stream. `subscribe` is refused while the transport is unhealthy.
//! - `publish` produces one record (acks from the partition leader) under
//!   [`KafkaTransportOptions::publish_timeout`]; `Ok` means the broker stored it. Publishes
//!   issued one after another to one logical topic land in that order in one partition and
//!   are delivered in that order, at most once per subscriber.
//! - Size: Kafka refuses records larger than the broker's `message.max.bytes` (1 MiB by
//!   default). A message whose key + value + 512 bytes of batch overhead exceed
//!   [`KafkaTransportOptions::max_message_bytes`] (default 1,048,576) is refused **before**
//!   publishing with [`AdapterError::Malformed`] saying so; it never silently disappears.
//! - Each subscription is a bounded queue of [`KafkaTransportOptions::queue_capacity`]
//!   messages (default 65,536). Consumers never wait for a slow subscriber: a message that
//!   does not fit is dropped for that subscription, counted in [`KafkaTransport::dropped`]
//!   and logged (first drop, then every 1,000th).
//!
//! # Reconnection and health
//! Each partition consumer long-polls (`fetch` waiting at most
//! [`KafkaTransportOptions::fetch_wait`]). When a fetch fails or takes 1 s longer than that
//! (broker down, leader moved),
//! the partition is marked down, and the consumer retries with back-off (100 ms doubling to
//! 2 s), reconnecting through the client's metadata. It resumes **from the offset after the
//! last record it consumed**, so messages produced while it was reconnecting are still
//! delivered. When the broker's log no longer holds that offset (a broker that lost its
//! data, e.g. an in-memory broker restarted, or retention), the consumer restarts at the
//! log's earliest offset (which, after a data loss, may redeliver records published since).
//! A topic that disappeared (broker restarted without its data) is created again. After an
//! outage the consumer first checks that the log is the one it was reading (the last record
//! it consumed must still be there, unchanged); a log it cannot check (a broker whose answer
//! for that record lacks the partition, as Tansu 0.6 answers for a topic its automatic
//! creation re-made after a restart) counts as a new log, read from its start. A broker whose
//! automatic creation makes fewer partitions than this transport reads would leave the readers
//! of the missing ones down: only a topic that is gone is created again (rskafka cannot add
//! partitions).
//!
//! [`Transport::is_healthy`] is false while any partition consumer is down and after a
//! publish failed, until a consumer's next successful fetch confirms the producing
//! connection again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod consumer;

use consumer::{consume, Consumer};

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// Bytes of a record batch besides key and value, reserved when checking the size limit.
const RECORD_OVERHEAD: usize = 512;

/// How much longer than [`KafkaTransportOptions::fetch_wait`] a fetch may take before the
/// partition counts as unreachable (a dead broker is not always noticed by the connection).
const FETCH_GRACE: Duration = Duration::from_secs(1);

/// How often queues of dropped streams are forgotten (those of busy topics go at once).
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// SASL mechanisms the client speaks (`KAFKA_SASL_MECHANISM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaSaslMechanism {
    /// `PLAIN`
    Plain,
    /// `SCRAM-SHA-256`
    ScramSha256,
    /// `SCRAM-SHA-512`
    ScramSha512,
}

impl KafkaSaslMechanism {
    /// Parse a Kafka mechanism name (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`; any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Self::Plain),
            "SCRAM-SHA-256" => Some(Self::ScramSha256),
            "SCRAM-SHA-512" => Some(Self::ScramSha512),
            _ => None,
        }
    }
}

/// SASL authentication (over a plaintext connection: `SASL_PLAINTEXT`).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: KafkaSaslMechanism,
    /// The SASL user.
    pub username: String,
    /// The SASL password (hidden by `Debug`).
    pub password: String,
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Settings of a [`KafkaTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTransportOptions {
    /// Bootstrap brokers, `host:port` (at least one).
    pub brokers: Vec<String>,
    /// The Kafka topic carrying every logical topic of this cluster (`[A-Za-z0-9._-]`,
    /// at most 249 characters).
    pub topic: String,
    /// Partitions of the topic when it is created here (default 4).
    pub partitions: i32,
    /// Replication factor of the topic when it is created here (default 1).
    pub replication_factor: i16,
    /// SASL authentication, if the brokers require it.
    pub sasl: Option<KafkaSasl>,
    /// Upper bound of connecting and of each metadata/offset request (default 5 s).
    pub connect_timeout: Duration,
    /// Upper bound of one publish (default 2 s).
    pub publish_timeout: Duration,
    /// How long one fetch waits at the broker for new records (default 100 ms). Brokers that
    /// answer a waiting fetch as soon as a record arrives (Apache Kafka, Redpanda) add no
    /// latency through it; others (Tansu 0.6) answer only when the wait is over, so it bounds
    /// the delivery latency there.
    pub fetch_wait: Duration,
    /// The brokers' `message.max.bytes` (default 1,048,576); larger messages are refused.
    pub max_message_bytes: usize,
    /// Capacity of each subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// First retry delay of a failed consumer (default 100 ms), doubled after each failure …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
}

impl Default for KafkaTransportOptions {
    fn default() -> Self {
        KafkaTransportOptions {
            brokers: vec!["127.0.0.1:9092".to_owned()],
            topic: "sockudo".to_owned(),
            partitions: 4,
            replication_factor: 1,
            sasl: None,
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(2),
            fetch_wait: Duration::from_millis(100),
            max_message_bytes: 1_048_576,
            queue_capacity: 65_536,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

type Topics = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

#[derive(Debug)]
struct Shared {
    topics: Mutex<Topics>,
    partitions_up: Vec<AtomicBool>,
    publish_ok: AtomicBool,
    dropped: AtomicU64,
    /// Serialises re-creating the topic after a broker lost it.
    ensure: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    fn consumers_up(&self) -> bool {
        self.partitions_up.iter().all(|p| p.load(Ordering::SeqCst))
    }
}

/// Kafka API [`Transport`]; see the module docs.
pub struct KafkaTransport {
    producers: Vec<Arc<PartitionClient>>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    opts: KafkaTransportOptions,
}

impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("consumers_up", &self.shared.consumers_up())
            .field(
                "publish_ok",
                &self.shared.publish_ok.load(Ordering::Relaxed),
            )
            .field("dropped", &self.dropped())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaTransport {
    fn drop(&mut self) {
        // Ends the consumers, which drops every queue sender: the streams end.
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("kafka {what}: {e}"))
}

async fn bounded<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, KafkaError>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} ms", d.as_millis())),
    }
}

fn is_protocol(e: &KafkaError, which: ProtocolError) -> bool {
    matches!(e, KafkaError::ServerError { protocol_error, .. } if *protocol_error == which)
}

/// Stable partition of a logical topic (FNV-1a, the same on every node).
fn partition_of(topic: &str, partitions: usize) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in topic.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as usize) % partitions.max(1)
}

/// Check options that cannot work.
fn check(opts: &KafkaTransportOptions) -> Result<(), AdapterError> {
    let bad = |m: String| Err(AdapterError::Malformed(m));
    if opts.brokers.iter().all(|b| b.trim().is_empty()) {
        return bad("KAFKA_BROKERS names no broker".into());
    }
    if let Some(b) = opts.brokers.iter().find(|b| {
        b.contains("://")
            || b.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    }) {
        return bad(format!("KAFKA_BROKERS entry {b:?} is not host:port"));
    }
    let t = &opts.topic;
    if t.is_empty()
        || t.len() > 249
        || t == "."
        || t == ".."
        || !t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return bad(format!(
            "kafka topic {t:?} must be 1-249 characters of [A-Za-z0-9._-]"
        ));
    }
    if opts.partitions < 1 || opts.replication_factor < 1 {
        return bad("kafka partitions and replication factor must be at least 1".into());
    }
    if opts.max_message_bytes <= RECORD_OVERHEAD {
        return bad(format!(
            "kafka max message size must exceed {RECORD_OVERHEAD} bytes"
        ));
    }
    Ok(())
}

impl KafkaTransport {
    /// Connect to the brokers, create the topic when missing and start consuming every
    /// partition from its current end. Fails when the brokers do not answer within the
    /// connect timeout (no silent fallback). Must be called inside a Tokio runtime.
    pub async fn connect(opts: KafkaTransportOptions) -> Result<Self, AdapterError> {
        check(&opts)?;
        // rskafka retries inside each request; bound that so errors surface (our own loops
        // retry), and bound each call again with a timeout.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.,
            deadline: Some(opts.connect_timeout.min(Duration::from_millis(500))),
        };
        let mut builder = ClientBuilder::new(
            opts.brokers
                .iter()
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty())
                .collect(),
        )
        .client_id("sockudo")
        .backoff_config(backoff)
        .max_message_size(opts.max_message_bytes.saturating_mul(8).max(16 << 20));
        if let Some(sasl) = &opts.sasl {
            let c = Credentials::new(sasl.username.clone(), sasl.password.clone());
            builder = builder.sasl_config(match sasl.mechanism {
                KafkaSaslMechanism::Plain => SaslConfig::Plain(c),
                KafkaSaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                KafkaSaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            });
        }
        let client = bounded(opts.connect_timeout, builder.build())
            .await
            .map_err(|e| unavailable("connect", format!("{:?}: {e}", opts.brokers)))?;
        let client = Arc::new(client);
        let ensure = Arc::new(tokio::sync::Mutex::new(()));
        // Create the topic only when it is missing (a broker may allow using a topic but
        // not creating one), then wait (bounded) for the metadata to show its partitions.
        let mut partitions = partition_count(&client, &opts).await?;
        if partitions == 0 {
            ensure_topic(&client, &ensure, &opts)
                .await
                .map_err(|e| unavailable("create topic", e))?;
            let until = tokio::time::Instant::now() + opts.connect_timeout;
            while partitions == 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
                partitions = partition_count(&client, &opts).await?;
            }
        }
        if partitions == 0 {
            return Err(unavailable(
                "metadata",
                format!("topic {:?} has no partitions", opts.topic),
            ));
        }
        let mut producers = Vec::with_capacity(partitions);
        let mut consumers = Vec::with_capacity(partitions);
        let mut starts = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            // Separate connections for producing and for long-polling fetches.
            let producer = partition_client(&client, &opts, p).await?;
            let consumer = partition_client(&client, &opts, p).await?;
            let end = bounded(opts.connect_timeout, consumer.get_offset(OffsetAt::Latest))
                .await
                .map_err(|e| unavailable("offset", e))?;
            producers.push(Arc::new(producer));
            consumers.push(Arc::new(consumer));
            starts.push(end);
        }
        let shared = Arc::new(Shared {
            topics: Mutex::new(HashMap::new()),
            partitions_up: (0..partitions).map(|_| AtomicBool::new(true)).collect(),
            publish_ok: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            ensure,
        });
        let tasks = consumers
            .into_iter()
            .zip(starts)
            .enumerate()
            .map(|(i, (consumer, start))| {
                tokio::spawn(consume(Consumer {
                    index: i,
                    client: client.clone(),
                    consumer,
                    producer: producers[i].clone(),
                    offset: start,
                    last: None,
                    verify: false,
                    shared: shared.clone(),
                    opts: opts.clone(),
                }))
            })
            .collect();
        Ok(KafkaTransport {
            producers,
            shared,
            tasks,
            opts,
        })
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &KafkaTransportOptions {
        &self.opts
    }

    /// Partitions consumed (those of the topic as found or created).
    pub fn partitions(&self) -> usize {
        self.producers.len()
    }
}

async fn partition_client(
    client: &Client,
    opts: &KafkaTransportOptions,
    p: i32,
) -> Result<PartitionClient, AdapterError> {
    bounded(
        opts.connect_timeout,
        client.partition_client(opts.topic.clone(), p, UnknownTopicHandling::Error),
    )
    .await
    .map_err(|e| unavailable("partition", e))
}

/// Partitions of the topic as the brokers report it (0: no such topic).
async fn partition_count(
    client: &Client,
    opts: &KafkaTransportOptions,
) -> Result<usize, AdapterError> {
    let topics = bounded(opts.connect_timeout, client.list_topics())
        .await
        .map_err(|e| unavailable("metadata", e))?;
    Ok(topics
        .iter()
        .find(|t| t.name == opts.topic)
        .map(|t| t.partitions.len())
        .unwrap_or(0))
}

/// Create the topic unless it exists.
async fn ensure_topic(
    client: &Client,
    ensure: &tokio::sync::Mutex<()>,
    opts: &KafkaTransportOptions,
) -> Result<(), String> {
    let _one_at_a_time = ensure.lock().await;
    let controller = client.controller_client().map_err(|e| e.to_string())?;
    let timeout_ms = i32::try_from(opts.connect_timeout.as_millis()).unwrap_or(i32::MAX);
    match tokio::time::timeout(
        opts.connect_timeout,
        controller.create_topic(
            opts.topic.clone(),
            opts.partitions,
            opts.replication_factor,
            timeout_ms,
        ),
    )
    .await
    {
        Ok(Ok(())) => {
            tracing::info!(topic = %opts.topic, partitions = opts.partitions, "kafka transport: topic created");
            Ok(())
        }
        Ok(Err(e)) if is_protocol(&e, ProtocolError::TopicAlreadyExists) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        let size = topic.len() + payload.len() + RECORD_OVERHEAD;
        if size > self.opts.max_message_bytes {
            return Err(AdapterError::Malformed(format!(
                "kafka publish on {topic}: message of {} bytes exceeds the Kafka message size \
                 limit of {} bytes (message.max.bytes, including {RECORD_OVERHEAD} bytes of \
                 record overhead)",
                payload.len(),
                self.opts.max_message_bytes
            )));
        }
        let Some(producer) = self
            .producers
            .get(partition_of(topic, self.producers.len()))
        else {
            return Err(unavailable("publish", "no partition"));
        };
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let record = Record {
            key: Some(topic.as_bytes().to_vec()),
            value: Some(payload.to_vec()),
            headers: BTreeMap::new(),
            timestamp: chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default(),
        };
        let r = bounded(
            self.opts.publish_timeout,
            producer.produce(vec![record], Compression::NoCompression),
        )
        .await
        .map(|_| ())
        .map_err(|e| unavailable("publish", e));
        self.shared.publish_ok.store(r.is_ok(), Ordering::SeqCst);
        r
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        // The consumers run from the moment `connect` returned (see the module docs): a
        // registered queue gets every message published from now on.
        if !self.shared.consumers_up() {
            return Err(unavailable("subscribe", "not connected to the brokers"));
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
        TransportCapabilities {
            // Local routing by key: see "Interest routing" in the module docs.
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.consumers_up() && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(
            partition_of("P.broadcast", 4),
            partition_of("P.broadcast", 4)
        );
        let used: std::collections::HashSet<usize> = (0..64)
            .map(|i| partition_of(&format!("P.ch.app.c{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
        assert_eq!(partition_of("x", 1), 0);
    }

    #[test]
    fn options_are_checked() {
        let ok = KafkaTransportOptions::default();
        assert!(check(&ok).is_ok());
        for bad in [
            KafkaTransportOptions {
                brokers: vec![],
                ..ok.clone()
            },
            KafkaTransportOptions {
                brokers: vec!["kafka://a:1".into()],
                ..ok.clone()
            },
            KafkaTransportOptions {
                brokers: vec!["a".into()],
                ..ok.clone()
            },
            KafkaTransportOptions {
                topic: "a/b".into(),
                ..ok.clone()
            },
            KafkaTransportOptions {
                partitions: 0,
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sasl_password_is_hidden() {
        let s = KafkaSasl {
            mechanism: KafkaSaslMechanism::parse("scram-sha-512").unwrap(),
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{s:?}").contains("secret"));
        assert_eq!(KafkaSaslMechanism::parse("GSSAPI"), None);
    }
}
