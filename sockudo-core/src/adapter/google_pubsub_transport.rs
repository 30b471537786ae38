//! [`Transport`] over Google Cloud Pub/Sub (feature `google-pubsub`).
//!
//! # Layout at the broker
//! One Pub/Sub topic per cluster prefix ([`GooglePubSubTransportOptions::topic_id`], by
//! default `sockudo-cluster.{prefix}`), created by the first node that needs it. Every
//! message carries its logical topic (`P.broadcast`, `P.ch.…`, …) in the attribute
//! [`TOPIC_ATTRIBUTE`] and as its ordering key. Each node (each transport) has its own pull
//! subscription `{topic id}.{node id}.{8 hex digits}`, created at connect with message
//! ordering on, the shortest retention Pub/Sub allows (10 minutes) and an expiration policy of
//! 24 hours (the minimum): the subscription of a node that died without cleaning up deletes
//! itself a day after its last pull. [`GooglePubSubTransport::close`] deletes it, and so do
//! a clean leave ([`Transport::leave`], called by the cluster adapter's `leave_cluster` on a
//! server's shutdown) and, best effort, `Drop`.
//!
//! # Interest routing
//! Demultiplexing by logical topic happens in the driver: every node's subscription receives
//! every message of the cluster topic, and the driver hands each one only to the streams
//! subscribed to its logical topic (others are acknowledged and dropped). Subscribing to a
//! logical topic is therefore a local map entry (no broker round trip), which is why the
//! transport declares [`TransportCapabilities::per_channel_topics`]: with interest routing the
//! adapter above decodes and fans out only the channels this node has subscribers for. What
//! it does **not** save is network: Pub/Sub subscription filters are fixed at creation, so a
//! filter per channel would mean one subscription per channel (an admin call each, quotas),
//! which is not cheap.
//!
//! # Guarantees
//! - `publish`: `Ok` once Pub/Sub accepted the message (a synchronous `Publish` call, no
//!   client-side batching, no retry: a retried publish whose first answer was lost would be
//!   delivered twice), bounded by [`GooglePubSubTransportOptions::publish_timeout`].
//! - Ordering: the ordering key is the logical topic and every subscription has message
//!   ordering on, so publishes issued one after another by one caller on one topic are
//!   delivered in that order (the emulator honours ordering keys too).
//! - At most once per subscriber: Pub/Sub delivers at least once; the driver remembers the
//!   last [`GooglePubSubTransportOptions::dedup_capacity`] message ids of its subscription and
//!   drops redeliveries (counted in [`GooglePubSubTransport::duplicates`]). The memory is
//!   cleared when the subscription had to be created again (the emulator numbers messages
//!   from 1 again after a restart).
//! - `subscribe` returns once the node's subscription exists at the broker and is being
//!   pulled (confirmed by Pub/Sub when it was created and when the stream opened); it is
//!   refused while the transport is unhealthy. Everything published afterwards is retained
//!   for that subscription even while its stream reconnects.
//! - Each logical subscription is a bounded queue
//!   ([`GooglePubSubTransportOptions::queue_capacity`]); a full queue drops the message for
//!   that stream and counts it ([`GooglePubSubTransport::dropped`]); the pull never waits for
//!   a slow consumer. Dropped streams end their logical subscription at the next message or
//!   health check.
//!
//! # Message size
//! Pub/Sub refuses publish requests over 10 MB. `publish` computes the request's size
//! (payload, attribute, ordering key and framing) and refuses anything over
//! [`MAX_PUBLISH_BYTES`] (10,000,000 bytes) *before* sending, with
//! [`AdapterError::Malformed`]; ordering keys (logical topics) over 1,024 bytes are refused
//! the same way. Nothing is dropped silently.
//!
//! # Reconnect and health
//! A background task owns the streaming pull. When the stream fails (emulator or network
//! down), the transport turns unhealthy at once and the task retries with back-off (100 ms
//! doubling to 2 s): it first creates the topic and the subscription again if they are
//! missing — an emulator restart loses all state, so the driver recreates both by itself, with
//! the same subscription name — then opens a new stream. Every
//! [`GooglePubSubTransportOptions::check_interval`] it also checks that the subscription and
//! the topic still exist (a missing topic is created again). A publish that fails for a
//! connection reason marks the transport unhealthy until the next successful check.
//! [`Transport::is_healthy`] is true only while the stream is open and publishing works.
//! Messages published while a node's subscription did not exist (between an emulator restart
//! and its re-creation) never reach that node; the cluster adapter copes through readiness and
//! liveness, V2 clients through history.
//!
//! # Credentials
//! Only the emulator is supported (`PUBSUB_EMULATOR_HOST`): this build has no Google
//! credentials stack, and [`GooglePubSubTransport::connect`] refuses options without
//! [`GooglePubSubTransportOptions::emulator_host`] with a message that says so.

mod pull;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::publisher::{Publisher, PublisherConfig};
use gcloud_pubsub::subscription::Subscription;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// The attribute that carries a message's logical topic.
pub const TOPIC_ATTRIBUTE: &str = "t";

/// Largest publish request accepted before sending (Pub/Sub's limit is 10 MB per request).
pub const MAX_PUBLISH_BYTES: usize = 10_000_000;

/// Largest ordering key Pub/Sub accepts (the logical topic is the key).
const MAX_ORDERING_KEY_BYTES: usize = 1_024;

/// Settings of a [`GooglePubSubTransport`].
#[derive(Clone, PartialEq, Eq)]
pub struct GooglePubSubTransportOptions {
    /// The Google Cloud project (`GOOGLE_PUBSUB_PROJECT_ID`).
    pub project_id: String,
    /// `host:port` of the Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`); required (see the module
    /// docs).
    pub emulator_host: Option<String>,
    /// The Pub/Sub topic id of the cluster (see [`Self::topic_id_for_prefix`]).
    pub topic_id: String,
    /// Names this node's subscription (the node id).
    pub subscriber_name: String,
    /// Upper bound of connecting and of each admin call (default 2 s).
    pub connect_timeout: Duration,
    /// Upper bound of one publish (default 2 s).
    pub publish_timeout: Duration,
    /// Capacity of each logical subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// Message ids remembered to drop redeliveries (default 65,536).
    pub dedup_capacity: usize,
    /// How often the subscription and topic are checked (default 1 s).
    pub check_interval: Duration,
    /// First delay before reconnecting (default 100 ms), doubled after each failure …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
}

impl fmt::Debug for GooglePubSubTransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GooglePubSubTransportOptions")
            .field("project_id", &self.project_id)
            .field("emulator_host", &self.emulator_host)
            .field("topic_id", &self.topic_id)
            .field("subscriber_name", &self.subscriber_name)
            .field("publish_timeout", &self.publish_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

impl GooglePubSubTransportOptions {
    /// Options for the cluster `prefix`, node `node_id`, with the defaults above.
    pub fn new(
        project_id: impl Into<String>,
        emulator_host: Option<String>,
        prefix: &str,
        node_id: &str,
    ) -> Self {
        GooglePubSubTransportOptions {
            project_id: project_id.into(),
            emulator_host,
            topic_id: Self::topic_id_for_prefix(prefix),
            subscriber_name: node_id.to_owned(),
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            dedup_capacity: 65_536,
            check_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }

    /// The Pub/Sub topic id of a cluster prefix: `sockudo-cluster.{prefix}` (starts with a
    /// letter, never with `goog`, as Pub/Sub requires).
    pub fn topic_id_for_prefix(prefix: &str) -> String {
        format!("sockudo-cluster.{prefix}")
    }

    /// Refuse settings Pub/Sub (or this build) cannot work with, saying why.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |m: String| Err(AdapterError::Malformed(m));
        let Some(host) = &self.emulator_host else {
            return bad(
                "Google Pub/Sub without PUBSUB_EMULATOR_HOST would need Google \
                 credentials, which this build does not support: only the Pub/Sub emulator \
                 (PUBSUB_EMULATOR_HOST=host:port) can be used"
                    .into(),
            );
        };
        let valid_host = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid_host || host.contains('/') {
            return bad(format!(
                "PUBSUB_EMULATOR_HOST {host:?} must be host:port (no scheme)"
            ));
        }
        let project_ok = !self.project_id.is_empty()
            && self.project_id.len() <= 100
            && self
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !project_ok {
            return bad(format!(
                "GOOGLE_PUBSUB_PROJECT_ID {:?} is not a project id (letters, digits, '-', '.', ':')",
                self.project_id
            ));
        }
        check_resource_id("topic", &self.topic_id)?;
        check_resource_id("subscription", &self.subscription_id(0))?;
        Ok(())
    }

    /// This node's subscription id, with its random suffix.
    fn subscription_id(&self, suffix: u32) -> String {
        format!("{}.{}.{suffix:08x}", self.topic_id, self.subscriber_name)
    }
}

/// Pub/Sub resource ids: a letter first, then `[A-Za-z0-9._~+%-]`, 3 to 255 characters, not
/// starting with `goog`.
fn check_resource_id(what: &str, id: &str) -> Result<(), AdapterError> {
    let ok = (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && !id.to_ascii_lowercase().starts_with("goog")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~+%-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AdapterError::Malformed(format!(
            "Pub/Sub {what} id {id:?} is invalid (a letter first, [A-Za-z0-9._~+%-], 3 to 255 \
             characters, not starting with \"goog\"): shorten CLUSTER_PREFIX or the node id"
        )))
    }
}

/// Each logical topic's subscription queues.
type Routes = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

/// State shared by the transport and its pull task.
#[derive(Debug)]
struct Shared {
    /// True while the streaming pull is open.
    up: watch::Sender<bool>,
    publish_ok: AtomicBool,
    routes: Mutex<Routes>,
    dropped: AtomicU64,
    duplicates: AtomicU64,
    streams_opened: AtomicU64,
    recreated: AtomicU64,
}

/// Google Pub/Sub [`Transport`]; see the module docs.
pub struct GooglePubSubTransport {
    publisher: Publisher,
    subscription: Subscription,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    opts: GooglePubSubTransportOptions,
}

impl fmt::Debug for GooglePubSubTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GooglePubSubTransport")
            .field("subscription", &self.subscription.fully_qualified_name())
            .field("up", &*self.shared.up.borrow())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for GooglePubSubTransport {
    fn drop(&mut self) {
        // Ends the pull task, which drops every queue sender: the streams end.
        self.task.abort();
        // Best effort: the expiration policy removes it otherwise.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let subscription = self.subscription.clone();
            let limit = self.opts.connect_timeout;
            rt.spawn(async move {
                let _ = tokio::time::timeout(limit, subscription.delete(Some(no_retry()))).await;
            });
        }
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("google pubsub {what}: {e}"))
}

/// Every call is made once: the driver has its own timeouts and reconnect loop, and a retried
/// publish could be delivered twice.
fn no_retry() -> RetrySetting {
    RetrySetting {
        from_millis: 10,
        max_delay: None,
        factor: 1,
        take: 0,
        codes: Vec::new(),
    }
}

/// Errors that say the broker (or the way to it) is down, rather than this message is wrong.
fn is_connection_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::NotFound
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
    )
}

/// `f` under `limit`, as a message on failure.
async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

impl GooglePubSubTransport {
    /// Connect to the emulator, create the cluster topic and this node's subscription (when
    /// missing) and open the streaming pull. Fails when the emulator does not answer within
    /// the connect timeout, or the options are refused by [`GooglePubSubTransportOptions::validate`].
    /// Must be called inside a Tokio runtime.
    pub async fn connect(opts: GooglePubSubTransportOptions) -> Result<Self, AdapterError> {
        opts.validate()?;
        let host = opts.emulator_host.clone().unwrap_or_default();
        let config = ClientConfig {
            pool_size: 1,
            project_id: Some(opts.project_id.clone()),
            environment: Environment::Emulator(host.clone()),
            connection_option: ConnectionOptions {
                timeout: None,
                connect_timeout: Some(opts.connect_timeout),
                http2_keep_alive_interval: Some(Duration::from_secs(1)),
                keep_alive_timeout: Some(opts.connect_timeout),
                keep_alive_while_idle: Some(true),
            },
            ..ClientConfig::default()
        };
        let client = tokio::time::timeout(opts.connect_timeout, Client::new(config))
            .await
            .map_err(|_| unavailable("connect", format!("{host} did not answer in time")))?
            .map_err(|e| unavailable("connect", format!("{host}: {e}")))?;
        let topic = client.topic(&opts.topic_id);
        let subscription = client.subscription(&opts.subscription_id(rand::random()));
        let puller = pull::Puller::new(topic.clone(), subscription.clone(), opts.clone());
        // Fail the start with the broker's own words when topic or subscription cannot be made.
        puller
            .ensure(&mut pull::Dedup::new(1))
            .await
            .map_err(|e| unavailable("connect", e))?;
        let (up, mut up_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            up,
            publish_ok: AtomicBool::new(true),
            routes: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            recreated: AtomicU64::new(0),
        });
        let task = tokio::spawn(puller.run(shared.clone()));
        let publisher = topic.new_publisher(Some(PublisherConfig {
            workers: 1,
            flush_interval: Duration::from_secs(1),
            bundle_size: 1,
            retry_setting: Some(no_retry()),
        }));
        let transport = GooglePubSubTransport {
            publisher,
            subscription,
            shared,
            task,
            opts,
        };
        // A bool, not the guard `wait_for` returns: nothing of the watch is held across awaits.
        let opened = tokio::time::timeout(transport.opts.connect_timeout, up_rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok());
        if !opened {
            return Err(unavailable(
                "connect",
                "the streaming pull did not open in time",
            ));
        }
        transport.warm_up().await?;
        Ok(transport)
    }

    /// One message through the broker and back on this node's own stream: once it is back,
    /// the streaming pull delivers (a fresh stream may take a moment before its first
    /// delivery; the cluster adapter's start-up probe must not fall into that moment). Other
    /// nodes drop it: nobody else routes its topic.
    async fn warm_up(&self) -> Result<(), AdapterError> {
        use futures_util::StreamExt;
        let topic = format!("_sync.{:016x}", rand::random::<u64>());
        let mut stream = self.subscribe(&topic).await?;
        self.publish(&topic, Bytes::from_static(b"sync")).await?;
        match tokio::time::timeout(self.opts.connect_timeout, stream.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(unavailable(
                "connect",
                "the streaming pull delivered nothing in time",
            )),
        }
    }

    /// Delete this node's subscription and stop pulling (a clean shutdown; the streams end).
    pub async fn close(&self) -> Result<(), AdapterError> {
        self.task.abort();
        timed(
            self.opts.connect_timeout,
            self.subscription.delete(Some(no_retry())),
        )
        .await
        .map_err(|e| unavailable("delete subscription", e))
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Redeliveries dropped by the driver's deduplication.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Streaming pulls opened, the first included (more than one: reconnections).
    pub fn streams_opened(&self) -> u64 {
        self.shared.streams_opened.load(Ordering::Relaxed)
    }

    /// Times topic or subscription had to be created again after the start.
    pub fn recreated(&self) -> u64 {
        self.shared.recreated.load(Ordering::Relaxed)
    }

    /// The fully qualified name of this node's subscription.
    pub fn subscription_name(&self) -> &str {
        self.subscription.fully_qualified_name()
    }

    /// The options in force.
    pub fn options(&self) -> &GooglePubSubTransportOptions {
        &self.opts
    }
}

/// The encoded size of a one-message publish request, generously rounded up.
fn request_size(name_len: usize, topic: &str, payload: usize) -> usize {
    // Per field a tag and a length of at most 5 bytes each; the message id and map entry
    // framing; the attribute key.
    const FRAMING: usize = 64;
    name_len + payload + 2 * topic.len() + TOPIC_ATTRIBUTE.len() + FRAMING
}

/// Refuse what Pub/Sub would refuse, before sending (see the module docs).
fn check_size(name_len: usize, topic: &str, payload: usize) -> Result<(), AdapterError> {
    if topic.len() > MAX_ORDERING_KEY_BYTES {
        return Err(AdapterError::Malformed(format!(
            "google pubsub publish: topic name of {} bytes exceeds the 1,024-byte ordering key limit",
            topic.len()
        )));
    }
    let size = request_size(name_len, topic, payload);
    if size > MAX_PUBLISH_BYTES {
        return Err(AdapterError::Malformed(format!(
            "google pubsub publish: message of {payload} bytes ({size} with its envelope) exceeds \
             Pub/Sub's limit of {MAX_PUBLISH_BYTES} bytes per publish"
        )));
    }
    Ok(())
}

#[async_trait]
impl Transport for GooglePubSubTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        // The fully qualified topic name (`projects/{p}/topics/{t}`) is part of the request.
        let name_len =
            "projects//topics/".len() + self.opts.project_id.len() + self.opts.topic_id.len();
        check_size(name_len, topic, payload.len())?;
        let message = PubsubMessage {
            data: payload,
            attributes: HashMap::from([(TOPIC_ATTRIBUTE.to_owned(), topic.to_owned())]),
            ordering_key: topic.to_owned(),
            ..PubsubMessage::default()
        };
        let sent = tokio::time::timeout(
            self.opts.publish_timeout,
            self.publisher
                .publish_immediately(vec![message], Some(no_retry())),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.shared.publish_ok.store(true, Ordering::SeqCst);
                Ok(())
            }
            Ok(Err(s)) => {
                if is_connection_error(s.code()) {
                    self.shared.publish_ok.store(false, Ordering::SeqCst);
                }
                Err(unavailable(
                    "publish",
                    format!("{:?}: {}", s.code(), s.message()),
                ))
            }
            Err(_) => {
                self.shared.publish_ok.store(false, Ordering::SeqCst);
                Err(unavailable("publish", "no answer in time"))
            }
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if !*self.shared.up.borrow() {
            return Err(unavailable("subscribe", "the streaming pull is down"));
        }
        let (tx, rx) = mpsc::channel(self.opts.queue_capacity.max(1));
        self.shared
            .routes
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn leave(&self) {
        match self.close().await {
            Ok(()) => tracing::info!(
                subscription = %self.subscription.id(),
                "google pubsub transport: subscription deleted"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "google pubsub transport: could not delete the subscription; it expires by itself"
            ),
        }
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        *self.shared.up.borrow() && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts() -> GooglePubSubTransportOptions {
        GooglePubSubTransportOptions::new("p", Some("127.0.0.1:8085".into()), "sockudo", "n1")
    }

    #[test]
    fn options_are_checked() {
        assert!(opts().validate().is_ok());
        assert_eq!(opts().topic_id, "sockudo-cluster.sockudo");
        let no_emulator = GooglePubSubTransportOptions {
            emulator_host: None,
            ..opts()
        };
        let e = no_emulator.validate().unwrap_err().to_string();
        assert!(e.contains("PUBSUB_EMULATOR_HOST"), "{e}");
        for host in ["http://h:1", "h", "h:0", ":1", "h:x"] {
            let o = GooglePubSubTransportOptions {
                emulator_host: Some(host.into()),
                ..opts()
            };
            assert!(o.validate().is_err(), "{host}");
        }
        for project in ["", "a b", "p/q"] {
            let o = GooglePubSubTransportOptions {
                project_id: project.into(),
                ..opts()
            };
            assert!(o.validate().is_err(), "{project:?}");
        }
        let long =
            GooglePubSubTransportOptions::new("p", opts().emulator_host, &"x".repeat(240), "n");
        assert!(long.validate().is_err());
        assert!(check_resource_id("topic", "goog-x").is_err());
        assert!(check_resource_id("topic", "1abc").is_err());
    }

    #[test]
    fn oversized_messages_are_refused_before_publish() {
        assert!(check_size(30, "P.broadcast", 1_000).is_ok());
        let e = check_size(30, "P.broadcast", MAX_PUBLISH_BYTES).unwrap_err();
        assert!(matches!(e, AdapterError::Malformed(_)), "{e}");
        assert!(e.to_string().contains("10000000"), "{e}");
        assert!(check_size(30, &"x".repeat(1_025), 1).is_err());
    }
}
