//! [`Transport`] over NATS core subjects (feature `nats`).
//!
//! # Connection
//! One `async_nats::Client` (a cheap handle over one connection task) to one of the
//! configured servers. The client reconnects by itself, to any server of the list or of the
//! NATS cluster's gossip, and re-establishes every subscription on the new connection; the
//! streams handed out by [`Transport::subscribe`] simply resume. Messages published while the
//! node was disconnected are not received (NATS core keeps nothing); the cluster adapter
//! copes through readiness and liveness, and V2 clients through continuity.
//!
//! # Guarantees
//! - `publish` fails at once while the client is not connected (the message did not leave
//!   this node), and within [`NatsTransportOptions::publish_timeout`] when the client's
//!   outgoing buffer does not take it. `Ok` means the message is in the connection's ordered
//!   outgoing stream: NATS delivers it at most once to each subscriber, in publish order per
//!   publisher and subject.
//! - A subscription is confirmed by a round trip before `subscribe` returns: after the `SUB`
//!   the client publishes a token to its own sync subject and waits for it to come back.
//!   The server handles one connection's operations in order, so once the token is back the
//!   subscription is in force on that server, and nothing published to it afterwards is
//!   missed while the connection holds. (Within a NATS *cluster*, interest reaches the other
//!   servers asynchronously, in milliseconds; a message published through another server in
//!   that instant can miss the new subscription. V2 clients get such a message from history.)
//! - Each subscription is bounded by the client's per-subscription capacity
//!   ([`NatsTransportOptions::queue_capacity`]); a consumer that falls that far behind loses
//!   messages and the client reports it as a slow consumer (logged and counted in
//!   [`NatsTransport::slow_consumer_events`]).
//! - [`Transport::is_healthy`] is the connection state: false from the moment the client
//!   notices a disconnection until it is connected again.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

/// Settings of a [`NatsTransport`].
#[derive(Clone, PartialEq, Eq)]
pub struct NatsTransportOptions {
    /// Servers to connect to (`nats://host:port`, at least one), in order of preference: the
    /// client connects to the first that answers and fails over to the others (and to
    /// servers the NATS cluster advertises).
    pub servers: Vec<String>,
    /// User name and password, when the servers require them.
    pub user_password: Option<(String, String)>,
    /// Token, when the servers require one.
    pub token: Option<String>,
    /// Upper bound of connecting at start (default 2 s): a server list that does not answer
    /// in time fails the start.
    pub connect_timeout: Duration,
    /// Upper bound of one publish waiting for room in the outgoing buffer (default 1 s).
    pub publish_timeout: Duration,
    /// Messages buffered per subscription before the client drops (default 65,536).
    pub queue_capacity: usize,
}

impl fmt::Debug for NatsTransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransportOptions")
            .field("servers", &self.servers)
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl Default for NatsTransportOptions {
    fn default() -> Self {
        NatsTransportOptions {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            user_password: None,
            token: None,
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(1),
            queue_capacity: 65_536,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    slow_consumer: AtomicU64,
    connects: AtomicU64,
}

/// Waiters for sync tokens (see the module docs), by token.
type SyncWaiters = Mutex<HashMap<u64, oneshot::Sender<()>>>;

/// NATS [`Transport`]; see the module docs.
pub struct NatsTransport {
    client: Client,
    counters: Arc<Counters>,
    opts: NatsTransportOptions,
    /// This client's own subject for subscription round trips.
    sync_subject: String,
    sync_waiters: Arc<SyncWaiters>,
    sync_token: AtomicU64,
    sync_task: JoinHandle<()>,
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.sync_task.abort();
    }
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("state", &self.client.connection_state())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("nats {what}: {e}"))
}

impl NatsTransport {
    /// Connect to one of `opts.servers`. Fails when none answers within the connect timeout
    /// (no silent fallback). Must be called inside a Tokio runtime.
    pub async fn connect(opts: NatsTransportOptions) -> Result<Self, AdapterError> {
        if opts.servers.is_empty() {
            return Err(AdapterError::Malformed("NATS_URL names no server".into()));
        }
        let counters = Arc::new(Counters::default());
        let seen = counters.clone();
        let mut connect = ConnectOptions::new()
            .name("sockudo")
            .subscription_capacity(opts.queue_capacity.max(1))
            .connection_timeout(opts.connect_timeout)
            .retry_on_initial_connect()
            // Unlimited reconnects, servers tried in the configured order (the first is the
            // preferred one), 100 ms more per failed attempt up to 2 s.
            .max_reconnects(None)
            .retain_servers_order()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(attempts as u64).min(2_000))
            })
            .event_callback(move |event| {
                let seen = seen.clone();
                async move { log_event(&seen, &event) }
            });
        if let Some((user, password)) = &opts.user_password {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &opts.token {
            connect = connect.token(token.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = opts
            .servers
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| AdapterError::Malformed(format!("NATS_URL entry {s:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = connect
            .connect(servers)
            .await
            .map_err(|e| unavailable("connect", e))?;
        // `retry_on_initial_connect` returns at once; wait (bounded) for the first connection
        // so an unreachable server list fails the start instead of being found out later.
        let up = tokio::time::timeout(opts.connect_timeout, client.flush()).await;
        if !matches!(up, Ok(Ok(()))) || client.connection_state() != State::Connected {
            return Err(unavailable(
                "connect",
                format!(
                    "no server of {:?} answered within {:?}",
                    opts.servers, opts.connect_timeout
                ),
            ));
        }
        let sync_subject = format!("_SOCKUDO_SYNC.{:016x}", rand::random::<u64>());
        let mut sync_sub = client
            .subscribe(sync_subject.clone())
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        let sync_waiters: Arc<SyncWaiters> = Arc::default();
        let waiters = Arc::clone(&sync_waiters);
        let sync_task = tokio::spawn(async move {
            while let Some(m) = sync_sub.next().await {
                let Ok(bytes) = <[u8; 8]>::try_from(m.payload.as_ref()) else {
                    continue;
                };
                if let Some(tx) = waiters.lock().remove(&u64::from_be_bytes(bytes)) {
                    let _ = tx.send(());
                }
            }
        });
        Ok(NatsTransport {
            client,
            counters,
            opts,
            sync_subject,
            sync_waiters,
            sync_token: AtomicU64::new(0),
            sync_task,
        })
    }

    /// Round trip through the server on this connection (see the module docs).
    async fn sync(&self) -> Result<(), AdapterError> {
        let token = self.sync_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.sync_waiters.lock().insert(token, tx);
        let round_trip = async {
            self.client
                .publish(
                    self.sync_subject.clone(),
                    Bytes::copy_from_slice(&token.to_be_bytes()),
                )
                .await
                .map_err(|e| unavailable("subscribe", e))?;
            self.client
                .flush()
                .await
                .map_err(|e| unavailable("subscribe", e))?;
            rx.await
                .map_err(|_| unavailable("subscribe", "sync subscription ended"))
        };
        let r = tokio::time::timeout(self.opts.connect_timeout, round_trip).await;
        self.sync_waiters.lock().remove(&token);
        r.map_err(|_| unavailable("subscribe", "server did not confirm in time"))?
    }

    /// Slow-consumer reports of the client (each is a subscription that dropped messages).
    pub fn slow_consumer_events(&self) -> u64 {
        self.counters.slow_consumer.load(Ordering::Relaxed)
    }

    /// Times the client (re)connected to a server, the first connection included.
    pub fn connects(&self) -> u64 {
        self.counters.connects.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &NatsTransportOptions {
        &self.opts
    }
}

fn log_event(counters: &Counters, event: &Event) {
    match event {
        Event::Connected => {
            counters.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("nats transport connected");
        }
        Event::Disconnected => tracing::warn!("nats transport disconnected; reconnecting"),
        Event::SlowConsumer(sid) => {
            counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sid, "nats subscription fell behind: messages dropped");
        }
        other => tracing::info!(event = %other, "nats transport event"),
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        if self.client.connection_state() != State::Connected {
            return Err(unavailable("publish", "not connected"));
        }
        let sent = tokio::time::timeout(
            self.opts.publish_timeout,
            self.client.publish(topic.to_owned(), payload),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("publish", e)),
            Err(_) => Err(unavailable("publish", "outgoing buffer full")),
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if self.client.connection_state() != State::Connected {
            return Err(unavailable("subscribe", "not connected"));
        }
        let sub = tokio::time::timeout(
            self.opts.connect_timeout,
            self.client.subscribe(topic.to_owned()),
        )
        .await
        .map_err(|_| unavailable("subscribe", "timed out"))?
        .map_err(|e| unavailable("subscribe", e))?;
        self.sync().await?;
        Ok(Box::pin(sub.map(|m| m.payload)))
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}
