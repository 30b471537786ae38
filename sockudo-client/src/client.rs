//! [`Client`]: the cheap, cloneable handle. Every method sends a command to the one
//! connection task and, where it has an answer, awaits it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::command::{Command, CommandSender, SignedIn};
use crate::connection::Task;
use crate::error::{Error, ErrorKind, Result};
use crate::event::ClientEvent;
use crate::history::{HistoryPage, HistoryQuery};
use crate::options::ClientOptions;
use crate::state::ConnectionState;
use crate::stats::{Stats, StatsCell};
use crate::subscription::{Subscription, UserEvents};

/// Capacity of the connection-event broadcast (slow readers see `Lagged`).
const EVENTS_CAPACITY: usize = 256;

/// A connection to a Sockudo / Pusher server. Clone it freely: all clones share one
/// connection task, which ends when [`close`](Client::close) is called or the last handle
/// (client or subscription) is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cmd: CommandSender,
    state: watch::Receiver<ConnectionState>,
    events: broadcast::Sender<ClientEvent>,
    stats: Arc<StatsCell>,
    opts: Arc<ClientOptions>,
    next_id: AtomicU64,
}

impl Client {
    /// Start the connection task. Unless the options say
    /// [`retry_on_initial_connect`](ClientOptions::retry_on_initial_connect), wait for the
    /// first connection and return its error if it fails.
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        opts.validate()?;
        let opts = Arc::new(opts);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);
        let stats = Arc::new(StatsCell::default());
        let task = Task::new(
            Arc::clone(&opts),
            cmd_rx,
            state_tx,
            events_tx.clone(),
            Arc::clone(&stats),
        );
        tokio::spawn(task.run());
        let client = Client {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                state: state_rx,
                events: events_tx,
                stats,
                opts,
                next_id: AtomicU64::new(0),
            }),
        };
        if client.inner.opts.retry_on_initial_connect {
            return Ok(client);
        }
        let mut rx = client.inner.state.clone();
        let state = rx
            .wait_for(|s| s.is_connected() || s.is_terminal())
            .await
            .map(|s| s.clone())
            .unwrap_or(ConnectionState::Closed);
        match state {
            ConnectionState::Connected { .. } => Ok(client),
            other => Err(state_error(&other)),
        }
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A `watch` receiver of the connection state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Wait until `pred` holds for the state, at most `timeout`.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        pred: impl FnMut(&ConnectionState) -> bool,
    ) -> Result<ConnectionState> {
        let mut rx = self.inner.state.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(pred).await.map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(Error::closed()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("state still {:?} after {timeout:?}", self.state()),
            )),
        }
    }

    /// The socket id of the current connection.
    pub fn socket_id(&self) -> Option<String> {
        self.inner.state.borrow().socket_id().map(str::to_owned)
    }

    /// Connection-level events (state changes, unclaimed server errors, recovery failures).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// Counters: duplicates dropped (total and per channel), deliveries, reconnects, gaps,
    /// recovery failures, lagging subscriptions, …
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Subscribe to `channel` and wait for the server's confirmation. Channels needing a
    /// signature go through the configured authorizer. Subscribing twice to the same channel
    /// returns a second stream of the same events. After a reconnect every channel is
    /// subscribed again automatically.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription> {
        let channel = channel.into();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // One slot more than configured: room for the `client_lagged` marker.
        let capacity = self.inner.opts.subscription_capacity.saturating_add(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (reply, answer) = oneshot::channel();
        self.send(Command::Subscribe {
            channel: channel.clone(),
            id,
            tx,
            reply,
        })?;
        let presence = match tokio::time::timeout(self.inner.opts.request_timeout, answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(self.gone()),
            Err(_) => {
                let _ = self.inner.cmd.send(Command::DropListener {
                    channel: channel.clone(),
                    id,
                });
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no answer to the subscription of {channel}"),
                ));
            }
        };
        Ok(Subscription {
            channel,
            id,
            rx,
            cmd: self.inner.cmd.clone(),
            presence,
        })
    }

    /// Unsubscribe `channel`: every stream of it ends.
    pub async fn unsubscribe(&self, channel: &str) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Unsubscribe {
            channel: channel.to_owned(),
            reply,
        })?;
        done.await.map_err(|_| self.gone())
    }

    /// Send a client event (`client-…`) on a subscribed private or presence channel. Resolves
    /// once the server has processed it: a refusal (`pusher:error`, e.g. client events
    /// disabled or rate limited) is returned as the error.
    pub async fn trigger(&self, channel: &str, event: &str, data: impl Serialize) -> Result<()> {
        let data = serde_json::value::to_raw_value(&data)
            .map_err(|e| Error::invalid(format!("event data is not serialisable: {e}")))?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Trigger {
            channel: channel.to_owned(),
            event: event.to_owned(),
            data,
            reply,
        })?;
        self.await_answer(answer, "the client event").await
    }

    /// Sign the user in (through the authorizer's `authenticate_user`) and subscribe to the
    /// user's own channel. Re-done automatically after reconnects.
    pub async fn signin(&self) -> Result<SignedIn> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Signin { reply })?;
        self.await_answer(answer, "signin").await
    }

    /// Events sent to the signed-in user (`#server-to-user-{id}`).
    pub fn user_events(&self) -> UserEvents {
        let (tx, rx) = mpsc::channel(self.inner.opts.subscription_capacity);
        let _ = self.inner.cmd.send(Command::UserListener { tx });
        UserEvents { rx }
    }

    /// V2: fetch a page of `channel`'s history (`sockudo:channel_history`), e.g.
    /// `HistoryQuery::until_attach()` after a `RecoveryFailed`.
    pub async fn history(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::History {
            channel: channel.to_owned(),
            query,
            reply,
        })?;
        self.await_answer(answer, "the history request").await
    }

    /// Close the connection (close frame 1000) and end the connection task; every
    /// subscription stream ends. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.inner.cmd.send(Command::Close { reply }).is_err() {
            return Ok(());
        }
        let _ = done.await;
        Ok(())
    }

    async fn await_answer<T>(&self, answer: oneshot::Receiver<Result<T>>, what: &str) -> Result<T> {
        match tokio::time::timeout(self.inner.opts.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no answer to {what} within {:?}",
                    self.inner.opts.request_timeout
                ),
            )),
        }
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.inner.cmd.send(cmd).map_err(|_| self.gone())
    }

    /// The error for a task that is no longer there.
    fn gone(&self) -> Error {
        state_error(&self.state())
    }
}

fn state_error(state: &ConnectionState) -> Error {
    match state {
        ConnectionState::Failed { code, reason } => {
            let kind = if matches!(code, Some(4000..=4099)) {
                ErrorKind::Rejected
            } else {
                ErrorKind::Connection
            };
            Error::new(kind, reason.clone()).with_code(*code)
        }
        _ => Error::closed(),
    }
}
