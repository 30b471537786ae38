//! [`Transport`] over Redis pub/sub (feature `redis`).
//!
//! # Connections
//! - **Publishing** goes through one [`ConnectionManager`] (multiplexed, reconnects by itself,
//!   as in [`crate::cache::RedisCache`]). Each `PUBLISH` runs under
//!   [`RedisTransportOptions::publish_timeout`] (default 1 s), so a dead or stalled Redis
//!   yields an `Err` within that bound. Publishes issued one after another by one caller reach
//!   Redis, and therefore every subscriber, in that order.
//! - **Subscriptions** live on one dedicated pub/sub connection owned by a background task.
//!   When it breaks (Redis restarted, network cut, or a periodic `PING` on it fails), the task
//!   reconnects with exponential back-off (100 ms doubling to 2 s) and re-subscribes every
//!   topic before reading again. Streams handed out by [`Transport::subscribe`] survive this:
//!   they simply resume. Messages published while the connection was down are lost (Redis
//!   pub/sub keeps nothing); the cluster adapter above copes through readiness and liveness.
//!
//! # Queues and overflow
//! Each subscription is a bounded queue of [`RedisTransportOptions::queue_capacity`] messages
//! (default 65,536). The reader never waits for a slow consumer (that would stall every topic
//! and eventually make Redis drop the connection for exceeding its pub/sub output buffer):
//! when a queue is full the message is dropped for that subscription, counted in
//! [`RedisTransport::dropped`], and logged (first drop, then every 1,000th). A consumer that
//! falls that far behind has already lost the realtime property; the count makes it visible.
//! Each incoming message is copied once out of the Redis reply into shared [`Bytes`]; all
//! subscriptions of that topic get the same buffer.
//!
//! # Health
//! [`Transport::is_healthy`] is false while the pub/sub connection is down, and after a publish
//! fails until a later publish (or the background task's `PING` on the publishing connection,
//! once per `ping_interval`) succeeds again.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::memory_transport::tokio_stream_shim::ReceiverStream;
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};
use crate::redis_conn::{RedisConn, RedisEndpoint};

/// Settings of a [`RedisTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTransportOptions {
    /// Upper bound of one `PUBLISH`, including a wait for a reconnection (default 1 s).
    pub publish_timeout: Duration,
    /// Upper bound of connecting (publishing connection at start, pub/sub connection on each
    /// attempt) and of a `SUBSCRIBE` (default 2 s).
    pub connect_timeout: Duration,
    /// Capacity of each subscription's queue (default 65,536 messages).
    pub queue_capacity: usize,
    /// First reconnection delay of the pub/sub connection (default 100 ms), doubled after each
    /// failed attempt …
    pub reconnect_min: Duration,
    /// … up to this (default 2 s).
    pub reconnect_max: Duration,
    /// How often the pub/sub connection is checked with a `PING` (default 1 s), which also
    /// detects half-open connections.
    pub ping_interval: Duration,
}

impl Default for RedisTransportOptions {
    fn default() -> Self {
        RedisTransportOptions {
            publish_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    subscriber_up: AtomicBool,
    publish_ok: AtomicBool,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

/// A request to the subscriber task (shared with the Redis Cluster transport).
#[derive(Debug)]
pub(super) enum Command {
    Subscribe {
        topic: String,
        tx: mpsc::Sender<Bytes>,
        /// `Ok` once Redis confirmed the subscription; `Err` when it could not (disconnected,
        /// or SUBSCRIBE failed): the caller must not assume it receives the topic.
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Redis pub/sub [`Transport`]; see the module docs.
pub struct RedisTransport {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    opts: RedisTransportOptions,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field(
                "subscriber_up",
                &self.shared.subscriber_up.load(Ordering::Relaxed),
            )
            .field(
                "publish_ok",
                &self.shared.publish_ok.load(Ordering::Relaxed),
            )
            .field("dropped", &self.shared.dropped.load(Ordering::Relaxed))
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisTransport {
    fn drop(&mut self) {
        // Ends the subscriber task, which drops every queue sender: the streams end.
        self.task.abort();
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("redis {what}: {e}"))
}

impl RedisTransport {
    /// Connect with the default options. Fails when Redis does not answer a `PING` within
    /// the connect timeout. Must be called inside a Tokio runtime.
    pub async fn connect(url: &str) -> Result<Self, AdapterError> {
        Self::connect_with(url, RedisTransportOptions::default()).await
    }

    /// Connect with explicit options.
    pub async fn connect_with(
        url: &str,
        opts: RedisTransportOptions,
    ) -> Result<Self, AdapterError> {
        let client = Client::open(url).map_err(|e| unavailable("url", e))?;
        let endpoint = RedisEndpoint::Single(url.to_owned());
        let conn =
            match crate::redis_conn::connect(&endpoint, opts.publish_timeout, opts.connect_timeout)
                .await
                .map_err(|e| unavailable("connect", e))?
            {
                RedisConn::Single(c) => c,
                RedisConn::Cluster(_) => return Err(unavailable("connect", "not a single server")),
            };
        let shared = Arc::new(Shared::default());
        shared.publish_ok.store(true, Ordering::SeqCst);
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(subscriber_task(
            client,
            conn.clone(),
            shared.clone(),
            rx,
            opts.clone(),
        ));
        Ok(RedisTransport {
            conn,
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

    /// Times the pub/sub connection was (re-)established.
    pub fn connections(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transport for RedisTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PUBLISH")
            .arg(topic)
            .arg(payload.as_ref())
            .to_owned();
        let r = match tokio::time::timeout(
            self.opts.publish_timeout,
            cmd.query_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable("PUBLISH", e)),
            Err(_) => Err(unavailable(
                "PUBLISH",
                format!(
                    "timed out after {} ms",
                    self.opts.publish_timeout.as_millis()
                ),
            )),
        };
        self.shared.publish_ok.store(r.is_ok(), Ordering::SeqCst);
        r
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        request_subscription(&self.commands, topic, self.opts.queue_capacity)
            .await
            .map_err(|e| unavailable("subscribe", e))
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.subscriber_up.load(Ordering::SeqCst)
            && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

/// Ask the subscriber task for `topic` and wait for the broker's confirmation; the stream's
/// queue holds `capacity` messages. (Shared with the Redis Cluster transport.)
pub(super) async fn request_subscription(
    commands: &mpsc::UnboundedSender<Command>,
    topic: &str,
    capacity: usize,
) -> Result<TransportStream, String> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (done, confirmed) = oneshot::channel();
    commands
        .send(Command::Subscribe {
            topic: topic.to_owned(),
            tx,
            done,
        })
        .map_err(|_| "subscriber task stopped".to_owned())?;
    confirmed
        .await
        .map_err(|_| "subscriber task stopped".to_owned())??;
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Each topic's subscription queues (shared with the Redis Cluster transport).
pub(super) type Topics = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

/// Hand one message to every queue of its topic; returns topics left without subscribers.
pub(super) fn route(
    topics: &mut Topics,
    dropped: &AtomicU64,
    channel: &str,
    payload: &[u8],
) -> Option<String> {
    let senders = topics.get_mut(channel)?;
    let bytes = Bytes::copy_from_slice(payload);
    senders.retain(|tx| match tx.try_send(bytes.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    topic = channel,
                    dropped_total = n + 1,
                    "redis transport: subscriber queue full, message dropped"
                );
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if senders.is_empty() {
        topics.remove(channel);
        return Some(channel.to_owned());
    }
    None
}

/// A subscription asked for while disconnected is refused: Redis cannot confirm it, and the
/// caller (e.g. a client's subscribe) must not be told it receives the topic.
fn refuse(cmd: Command) {
    let Command::Subscribe { done, .. } = cmd;
    let _ = done.send(Err("disconnected from Redis".to_owned()));
}

/// Drop closed subscriptions; returns the topics left without any (to UNSUBSCRIBE).
pub(super) fn prune(topics: &mut Topics) -> Vec<String> {
    let mut gone = Vec::new();
    topics.retain(|topic, senders| {
        senders.retain(|tx| !tx.is_closed());
        if senders.is_empty() {
            gone.push(topic.clone());
        }
        !senders.is_empty()
    });
    gone
}

pub(super) async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} ms", d.as_millis())),
    }
}

async fn subscriber_task(
    client: Client,
    conn: ConnectionManager,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    opts: RedisTransportOptions,
) {
    let mut topics: Topics = HashMap::new();
    let mut backoff = opts.reconnect_min;
    let mut first = true;
    loop {
        if !first {
            // Wait out the back-off, still accepting subscriptions.
            let until = Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => refuse(cmd),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(opts.reconnect_max);
        }
        first = false;
        let (mut sink, mut stream) = match with_timeout(
            opts.connect_timeout,
            client.get_async_pubsub(),
        )
        .await
        {
            Ok(p) => p.split(),
            Err(e) => {
                tracing::debug!(error = %e, "redis transport: pub/sub connection failed; retrying");
                continue;
            }
        };
        // Streams dropped while away need no subscription any more.
        prune(&mut topics);
        if !topics.is_empty() {
            let names: Vec<&str> = topics.keys().map(String::as_str).collect();
            if let Err(e) = with_timeout(opts.connect_timeout, sink.subscribe(names)).await {
                tracing::debug!(error = %e, "redis transport: re-subscribe failed; retrying");
                continue;
            }
        }
        shared.subscriber_up.store(true, Ordering::SeqCst);
        if shared.reconnects.fetch_add(1, Ordering::Relaxed) > 0 {
            tracing::info!(
                topics = topics.len(),
                "redis transport: pub/sub connection restored"
            );
        }
        backoff = opts.reconnect_min;
        let mut ping = tokio::time::interval(opts.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let reason = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        if let Some(gone) = route(&mut topics, &shared.dropped, msg.get_channel_name(), msg.get_payload_bytes()) {
                            // Inline, not spawned: a SUBSCRIBE to the same topic issued next
                            // must reach Redis after this UNSUBSCRIBE, never before it.
                            if let Err(e) = with_timeout(opts.connect_timeout, sink.unsubscribe(&gone)).await {
                                break format!("UNSUBSCRIBE failed: {e}");
                            }
                        }
                    }
                    None => break "connection closed".to_owned(),
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Subscribe { topic, tx, done }) => {
                        let new = !topics.contains_key(&topic);
                        topics.entry(topic.clone()).or_default().push(tx);
                        let r = if new { with_timeout(opts.connect_timeout, sink.subscribe(&topic)).await } else { Ok(()) };
                        // Registered either way (redone on reconnection for long-lived
                        // streams), but the caller learns it is not confirmed.
                        let _ = done.send(r.clone().map_err(|e| format!("SUBSCRIBE failed: {e}")));
                        if let Err(e) = r {
                            break format!("SUBSCRIBE failed: {e}");
                        }
                    }
                    None => return,
                },
                _ = ping.tick() => {
                    if let Err(e) = with_timeout(opts.ping_interval.max(Duration::from_millis(500)), sink.ping::<Value>()).await {
                        break format!("PING failed: {e}");
                    }
                    // Channels whose last stream was dropped and that stayed quiet since.
                    let gone = prune(&mut topics);
                    if !gone.is_empty() {
                        if let Err(e) = with_timeout(opts.connect_timeout, sink.unsubscribe(&gone)).await {
                            break format!("UNSUBSCRIBE failed: {e}");
                        }
                    }
                    if !shared.publish_ok.load(Ordering::SeqCst) {
                        let mut c = conn.clone();
                        if with_timeout(opts.connect_timeout, redis::cmd("PING").query_async::<Value>(&mut c)).await.is_ok() {
                            shared.publish_ok.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
        };
        shared.subscriber_up.store(false, Ordering::SeqCst);
        tracing::warn!(reason = %reason, "redis transport: pub/sub connection lost; reconnecting");
    }
}
