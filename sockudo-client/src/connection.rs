//! The single connection task: owns the WebSocket, every channel's state and the reconnect
//! loop. Handles talk to it through [`Command`]s; it publishes the state on a `watch` and
//! connection events on a `broadcast`. Incoming frames are handled in `handlers.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use sockudo_core::channel::{ChannelKind, ChannelName};
use sockudo_core::protocol::events::{self, classify, EventKind, Family};
use sockudo_core::protocol::ProtocolVersion;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::auth::{ChannelAuth, ChannelAuthRequest, UserAuth};
use crate::backoff::{delay_for, reaction, Reaction};
use crate::channels::{ChannelEntry, Listener, Status};
use crate::command::{Command, Reply, SignedIn};
use crate::continuity::HoldBudget;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{ChannelEvent, ClientEvent, Message};
use crate::frames;
use crate::history::{HistoryPage, CHANNEL_HISTORY};
use crate::options::ClientOptions;
use crate::positions::Position;
use crate::resume::resume_frame;
use crate::state::ConnectionState;
use crate::stats::{StatsCell, TaskGuard};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a graceful close waits for the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection (or the task) ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Close requested or every handle dropped.
    Exit,
    /// The connection is gone; `immediate` when the client itself declared it dead.
    Lost {
        code: Option<u16>,
        reason: String,
        immediate: bool,
    },
}

impl End {
    fn lost(code: Option<u16>, reason: impl Into<String>) -> Self {
        End::Lost {
            code,
            reason: reason.into(),
            immediate: false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Established {
    socket_id: String,
    #[serde(default)]
    activity_timeout: Option<u64>,
}

/// A result coming back from an authorizer call.
#[derive(Debug)]
pub(crate) enum AuthDone {
    Channel {
        epoch: u64,
        channel: String,
        result: Result<ChannelAuth>,
    },
    User {
        epoch: u64,
        result: Result<UserAuth>,
    },
}

/// An outstanding `ping`: the heartbeat's, or a barrier after a client event whose error
/// (if any) arrives before the matching `pong`.
#[derive(Debug)]
pub(crate) enum PendingPing {
    Heartbeat,
    Barrier(Option<Reply<()>>),
}

#[derive(Debug, Default)]
pub(crate) struct UserState {
    pub signed_in: Option<SignedIn>,
    pub waiters: Vec<Reply<SignedIn>>,
    /// An authorizer call or a `signin` frame is outstanding on this connection.
    pub in_flight: bool,
}

/// The connection task.
#[derive(Debug)]
pub(crate) struct Task {
    pub opts: Arc<ClientOptions>,
    pub family: Family,
    pub cmd_rx: mpsc::UnboundedReceiver<Command>,
    pub state_tx: watch::Sender<ConnectionState>,
    pub events_tx: broadcast::Sender<ClientEvent>,
    pub stats: Arc<StatsCell>,
    pub channels: HashMap<String, ChannelEntry>,
    pub user: UserState,
    pub user_listeners: Vec<mpsc::Sender<Message>>,
    pub auth_tasks: JoinSet<AuthDone>,
    pub epoch: u64,
    connected_before: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    // Per connection:
    pub socket_id: Option<String>,
    pub outbox: Vec<String>,
    pub pings: VecDeque<PendingPing>,
    pub history_waiters: HashMap<String, VecDeque<Reply<HistoryPage>>>,
    /// Room for frames held behind gaps and resume verdicts, shared by every channel.
    pub hold_budget: HoldBudget,
    pub last_error_code: Option<u16>,
    close_reply: Option<oneshot::Sender<()>>,
}

/// What a command asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Exit,
}

impl Task {
    pub fn new(
        opts: Arc<ClientOptions>,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        state_tx: watch::Sender<ConnectionState>,
        events_tx: broadcast::Sender<ClientEvent>,
        stats: Arc<StatsCell>,
    ) -> Self {
        let family = match opts.protocol {
            ProtocolVersion::V1 => Family::Pusher,
            ProtocolVersion::V2 => Family::Sockudo,
        };
        let hold_budget = HoldBudget::new(opts.gap_limits);
        Task {
            opts,
            family,
            cmd_rx,
            state_tx,
            events_tx,
            stats,
            channels: HashMap::new(),
            user: UserState::default(),
            user_listeners: Vec::new(),
            auth_tasks: JoinSet::new(),
            epoch: 0,
            connected_before: false,
            tls: None,
            socket_id: None,
            outbox: Vec::new(),
            pings: VecDeque::new(),
            history_waiters: HashMap::new(),
            hold_budget,
            last_error_code: None,
            close_reply: None,
        }
    }

    pub fn is_v2(&self) -> bool {
        self.opts.protocol == ProtocolVersion::V2
    }

    pub fn set_state(&self, state: ConnectionState) {
        self.state_tx.send_replace(state.clone());
        let _ = self.events_tx.send(ClientEvent::State(state));
    }

    /// The task: connect, serve, and reconnect per the close-code policy until closed or
    /// refused for good.
    pub async fn run(mut self) {
        let _guard = TaskGuard::new();
        let mut failures: u32 = 0;
        let mut attempt: u32 = 0;
        let terminal = loop {
            self.set_state(ConnectionState::Connecting { attempt });
            let end = match self.open().await {
                Ok(Some((ws, established))) => {
                    failures = 0;
                    self.session(ws, established).await
                }
                Ok(None) => End::Exit,
                Err(end) => end,
            };
            let (code, reason, immediate) = match end {
                End::Exit => break ConnectionState::Closed,
                End::Lost {
                    code,
                    reason,
                    immediate,
                } => (code, reason, immediate),
            };
            self.after_disconnect(code, &reason);
            if !self.connected_before && !self.opts.retry_on_initial_connect {
                break ConnectionState::Failed { code, reason };
            }
            failures = failures.saturating_add(1);
            let policy = if immediate {
                Reaction::Immediate
            } else {
                reaction(code)
            };
            let Some(delay) = delay_for(policy, failures, self.opts.backoff.as_ref()) else {
                break ConnectionState::Failed { code, reason };
            };
            if self.opts.max_reconnects.is_some_and(|max| failures > max) {
                break ConnectionState::Failed {
                    code,
                    reason: format!("gave up after {} failed reconnects: {reason}", failures - 1),
                };
            }
            self.set_state(ConnectionState::Disconnected {
                code,
                reason,
                retry_in: delay,
            });
            if self.wait_offline(delay).await == Flow::Exit {
                break ConnectionState::Closed;
            }
            attempt = attempt.saturating_add(1);
        };
        self.finish(&terminal);
        self.set_state(terminal);
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.send(());
        }
    }

    /// Open the socket and wait for `connection_established`, serving commands meanwhile.
    /// `Ok(None)`: the client was closed while connecting.
    async fn open(&mut self) -> Result<Option<(Ws, Established)>, End> {
        let connector = match self.connector() {
            Ok(c) => c,
            Err(e) => return Err(End::lost(None, e.to_string())),
        };
        let opening = open_socket(Arc::clone(&self.opts), connector);
        tokio::pin!(opening);
        loop {
            tokio::select! {
                opened = &mut opening => return opened.map(Some),
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Ok(None),
                    Some(cmd) => if self.handle_command(cmd) == Flow::Exit { return Ok(None) },
                },
            }
        }
    }

    fn connector(&mut self) -> Result<Option<Connector>> {
        if !self.opts.tls {
            return Ok(None);
        }
        if let Some(config) = &self.opts.tls_config {
            return Ok(Some(Connector::Rustls(Arc::clone(config))));
        }
        let config = match &self.tls {
            Some(c) => Arc::clone(c),
            None => {
                let c = default_tls_config()?;
                self.tls = Some(Arc::clone(&c));
                c
            }
        };
        Ok(Some(Connector::Rustls(config)))
    }

    /// Sleep `delay` between connections, serving commands.
    async fn wait_offline(&mut self, delay: Duration) -> Flow {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Flow::Continue,
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Flow::Exit,
                    Some(cmd) => if self.handle_command(cmd) == Flow::Exit { return Flow::Exit },
                },
            }
        }
    }

    /// Serve one established connection until it ends.
    async fn session(&mut self, mut ws: Ws, established: Established) -> End {
        self.epoch += 1;
        if self.connected_before {
            StatsCell::bump(&self.stats.reconnects);
        }
        self.connected_before = true;
        self.last_error_code = None;
        let server_timeout = established
            .activity_timeout
            .map(Duration::from_secs)
            .unwrap_or(self.opts.activity_timeout);
        let activity = server_timeout
            .min(self.opts.activity_timeout)
            .max(Duration::from_millis(100));
        self.socket_id = Some(established.socket_id.clone());
        self.set_state(ConnectionState::Connected {
            socket_id: established.socket_id,
            activity_timeout: activity,
        });
        self.on_connected();

        let mut last_rx = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let end = loop {
            if let Err(end) = self.flush(&mut ws).await {
                break end;
            }
            let heartbeat_at = match ping_sent {
                None => last_rx + activity,
                Some(at) => at + self.opts.pong_timeout,
            };
            let wake = self
                .resume_deadline()
                .map_or(heartbeat_at, |r| r.min(heartbeat_at));
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    None => break End::Exit,
                    Some(cmd) => if self.handle_command(cmd) == Flow::Exit { break End::Exit },
                },
                frame = ws.next() => {
                    last_rx = Instant::now();
                    ping_sent = None;
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => self.handle_text(text.as_str()),
                        Some(Ok(WsMessage::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code)).filter(|c| *c != 1005).or(self.last_error_code);
                            let reason = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty()).unwrap_or_else(|| "closed by the server".into());
                            break End::lost(code, reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break End::lost(self.last_error_code, format!("connection error: {e}")),
                        None => break End::lost(self.last_error_code, "connection closed"),
                    }
                },
                Some(done) = self.auth_tasks.join_next() => match done {
                    Ok(done) => self.on_auth(done),
                    Err(e) => tracing::warn!(error = %e, "authorizer task failed"),
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= heartbeat_at {
                        if ping_sent.is_some() {
                            break End::Lost { code: None, reason: "no answer to ping: connection is dead".into(), immediate: true };
                        }
                        self.outbox.push(frames::ping(self.family));
                        self.pings.push_back(PendingPing::Heartbeat);
                        ping_sent = Some(now);
                    }
                    self.check_resume_timeouts(now.into_std());
                }
            }
        };
        if matches!(end, End::Exit) {
            let _ = self.flush(&mut ws).await;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "client closed".into(),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
        }
        end
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), End> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.outbox);
        let write = async {
            for frame in frames {
                ws.feed(WsMessage::text(frame)).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(self.opts.request_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::lost(
                self.last_error_code,
                format!("write failed: {e}"),
            )),
            Err(_) => Err(End::Lost {
                code: None,
                reason: "write timed out".into(),
                immediate: true,
            }),
        }
    }

    /// A connection is up: subscribe every channel again, then (V2) one `sockudo:resume`
    /// with every channel position right behind the subscribes, without waiting for their
    /// answers; then sign in again. Channels that need authorization send their subscribe
    /// once authorized, so the resume may precede theirs: the server keeps the positions, and
    /// such a channel's wait for its verdict starts when its subscribe goes out.
    fn on_connected(&mut self) {
        let now = std::time::Instant::now();
        let v2 = self.is_v2();
        let mut positions: Vec<(String, Position)> = Vec::new();
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            entry.status = Status::Idle;
            entry.resumed = false;
            if entry.kind == ChannelKind::ServerToUser {
                continue; // subscribed again after the signin succeeds
            }
            if v2 {
                if let Some(position) = entry.continuity.begin_resume(now) {
                    entry.resumed = true;
                    positions.push((name.clone(), position));
                }
            }
            self.start_subscribe(&name);
        }
        positions.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(frame) =
            resume_frame(self.family, positions.iter().map(|(c, p)| (c.as_str(), p)))
        {
            self.outbox.push(frame);
        }
        if self.user.signed_in.is_some() || !self.user.waiters.is_empty() {
            self.start_signin();
        }
    }

    /// The earliest moment a gap or a resume verdict gives up.
    fn resume_deadline(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(ChannelEntry::deadline)
            .min()
            .map(Instant::from_std)
    }

    /// Start subscribing `name` on the current connection (authorizing first if needed).
    pub fn start_subscribe(&mut self, name: &str) {
        let Some(socket_id) = self.socket_id.clone() else {
            return;
        };
        let Some(entry) = self.channels.get_mut(name) else {
            return;
        };
        if entry.status != Status::Idle {
            return;
        }
        if entry.kind.requires_auth() {
            let Some(authorizer) = self.opts.authorizer.clone() else {
                let e = Error::new(
                    ErrorKind::Auth,
                    format!("{name} needs authorization but no authorizer is configured"),
                );
                self.fail_subscription(name, e);
                return;
            };
            entry.status = Status::Authorizing;
            let epoch = self.epoch;
            let channel = name.to_owned();
            let request = ChannelAuthRequest {
                socket_id,
                channel_name: name.to_owned(),
            };
            self.auth_tasks.spawn(async move {
                let result = authorizer.authorize_channel(request).await;
                AuthDone::Channel {
                    epoch,
                    channel,
                    result,
                }
            });
        } else {
            entry.status = Status::Subscribing;
            entry.continuity.subscribe_sent(std::time::Instant::now());
            self.outbox
                .push(frames::subscribe(self.family, name, None, None));
        }
    }

    pub fn start_signin(&mut self) {
        if self.user.in_flight {
            return;
        }
        let Some(socket_id) = self.socket_id.clone() else {
            return;
        };
        let Some(authorizer) = self.opts.authorizer.clone() else {
            let e = Error::new(ErrorKind::Auth, "signin needs an authorizer");
            for w in self.user.waiters.drain(..) {
                let _ = w.send(Err(e.clone()));
            }
            return;
        };
        self.user.in_flight = true;
        let epoch = self.epoch;
        self.auth_tasks.spawn(async move {
            let result = authorizer.authenticate_user(&socket_id).await;
            AuthDone::User { epoch, result }
        });
    }

    /// The subscription of `name` is refused: tell waiters and listeners, forget it.
    pub fn fail_subscription(&mut self, name: &str, error: Error) {
        if let Some(mut entry) = self.channels.remove(name) {
            for w in entry.waiters.drain(..) {
                let _ = w.send(Err(error.clone()));
            }
            if entry.subscribed_once {
                entry.fanout(name, &ChannelEvent::SubscriptionFailed(error));
            }
        }
    }

    /// Clean up after a connection ended.
    fn after_disconnect(&mut self, code: Option<u16>, reason: &str) {
        self.socket_id = None;
        self.outbox.clear();
        self.auth_tasks.abort_all();
        let lost =
            Error::new(ErrorKind::Connection, format!("connection lost: {reason}")).with_code(code);
        for ping in self.pings.drain(..) {
            if let PendingPing::Barrier(Some(reply)) = ping {
                let _ = reply.send(Err(lost.clone()));
            }
        }
        for (_, waiters) in self.history_waiters.drain() {
            for w in waiters {
                let _ = w.send(Err(lost.clone()));
            }
        }
        for entry in self.channels.values_mut() {
            entry.status = Status::Idle;
            entry.continuity.abandon();
        }
        if self.user.in_flight && code == Some(4009) {
            let e =
                Error::new(ErrorKind::Auth, format!("signin refused: {reason}")).with_code(code);
            for w in self.user.waiters.drain(..) {
                let _ = w.send(Err(e.clone()));
            }
            self.user.signed_in = None;
        }
        self.user.in_flight = false;
    }

    /// The task is ending: answer everyone still waiting.
    fn finish(&mut self, terminal: &ConnectionState) {
        let error = match terminal {
            ConnectionState::Failed { code, reason } => {
                let kind = if matches!(code, Some(4000..=4099)) {
                    ErrorKind::Rejected
                } else {
                    ErrorKind::Connection
                };
                Error::new(kind, reason.clone()).with_code(*code)
            }
            _ => Error::closed(),
        };
        for (_, mut entry) in self.channels.drain() {
            for w in entry.waiters.drain(..) {
                let _ = w.send(Err(error.clone()));
            }
        }
        for w in self.user.waiters.drain(..) {
            let _ = w.send(Err(error.clone()));
        }
        self.user_listeners.clear();
        self.auth_tasks.abort_all();
    }

    /// Serve one command (online or offline).
    pub fn handle_command(&mut self, cmd: Command) -> Flow {
        let online = self.socket_id.is_some();
        match cmd {
            Command::Subscribe {
                channel,
                id,
                tx,
                reply,
            } => self.cmd_subscribe(channel, id, tx, reply),
            Command::Unsubscribe { channel, reply } => {
                self.remove_channel(&channel);
                let _ = reply.send(());
            }
            Command::DropListener { channel, id } => {
                let abandoned = self.channels.get_mut(&channel).is_some_and(|e| {
                    e.listeners.retain(|l| l.id != id);
                    e.abandoned() && e.kind != ChannelKind::ServerToUser
                });
                if abandoned {
                    self.remove_channel(&channel);
                }
            }
            Command::Trigger {
                channel,
                event,
                data,
                reply,
            } => {
                if let Err(e) = self.check_trigger(&channel, &event, online) {
                    let _ = reply.send(Err(e));
                } else {
                    self.outbox
                        .push(frames::client_event(&event, &channel, &data));
                    self.outbox.push(frames::ping(self.family));
                    self.pings.push_back(PendingPing::Barrier(Some(reply)));
                }
            }
            Command::Signin { reply } => match &self.user.signed_in {
                Some(user) if !self.user.in_flight => {
                    let _ = reply.send(Ok(user.clone()));
                }
                _ => {
                    self.user.waiters.push(reply);
                    if online {
                        self.start_signin();
                    }
                }
            },
            Command::UserListener { tx } => self.user_listeners.push(tx),
            Command::History {
                channel,
                query,
                reply,
            } => {
                if !self.is_v2() {
                    let _ = reply.send(Err(Error::new(
                        ErrorKind::Unsupported,
                        "history needs protocol V2",
                    )));
                } else if !online {
                    let _ = reply.send(Err(Error::new(ErrorKind::NotConnected, "not connected")));
                } else {
                    let frame = sockudo_core::protocol::OutboundFrame::system(
                        self.family,
                        CHANNEL_HISTORY,
                        None,
                        &query.to_data(&channel),
                    );
                    self.outbox.push(frame);
                    self.history_waiters
                        .entry(channel)
                        .or_default()
                        .push_back(reply);
                }
            }
            Command::Close { reply } => {
                self.close_reply = Some(reply);
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    fn cmd_subscribe(
        &mut self,
        channel: String,
        id: u64,
        tx: mpsc::Sender<ChannelEvent>,
        reply: Reply<Option<crate::presence::SharedPresence>>,
    ) {
        let kind = match ChannelName::parse(&channel) {
            Ok(name) if name.kind() == ChannelKind::ServerToUser => {
                let _ = reply.send(Err(Error::invalid(
                    "the user channel is managed by signin: use Client::user_events",
                )));
                return;
            }
            Ok(name) => name.kind(),
            Err(e) => {
                let _ = reply.send(Err(Error::invalid(format!(
                    "invalid channel name {channel:?}: {e}"
                ))));
                return;
            }
        };
        let entry = match self.channels.entry(channel.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let entry = ChannelEntry::new(
                    &channel,
                    kind,
                    self.opts.dedup,
                    self.hold_budget.clone(),
                    self.opts.resume_timeout,
                );
                e.insert(entry)
            }
        };
        entry.listeners.push(Listener::new(id, tx));
        if entry.status == Status::Subscribed {
            let _ = reply.send(Ok(entry.presence.clone()));
            return;
        }
        entry.waiters.push(reply);
        self.start_subscribe(&channel);
    }

    fn check_trigger(&self, channel: &str, event: &str, online: bool) -> Result<()> {
        if !matches!(classify(event), EventKind::Client)
            || event.len() <= events::CLIENT_EVENT_PREFIX.len()
        {
            return Err(Error::invalid(format!(
                "client events must be named client-…, got {event:?}"
            )));
        }
        let name = ChannelName::parse(channel)
            .map_err(|e| Error::invalid(format!("invalid channel name {channel:?}: {e}")))?;
        if !name.kind().allows_client_events() {
            return Err(Error::invalid(format!(
                "client events are only allowed on private and presence channels, not {channel:?}"
            )));
        }
        if !online {
            return Err(Error::new(ErrorKind::NotConnected, "not connected"));
        }
        match self.channels.get(channel) {
            Some(e) if e.status == Status::Subscribed => Ok(()),
            _ => Err(Error::new(
                ErrorKind::NotSubscribed,
                format!("not subscribed to {channel}"),
            )),
        }
    }

    /// Forget a channel (its streams end) and unsubscribe it on the server.
    pub(crate) fn remove_channel(&mut self, channel: &str) {
        let Some(mut entry) = self.channels.remove(channel) else {
            return;
        };
        for w in entry.waiters.drain(..) {
            let _ = w.send(Err(Error::new(
                ErrorKind::Closed,
                format!("{channel} was unsubscribed"),
            )));
        }
        if self.socket_id.is_some()
            && matches!(entry.status, Status::Subscribing | Status::Subscribed)
        {
            self.outbox.push(frames::unsubscribe(self.family, channel));
        }
    }
}

/// Open the WebSocket and read up to `connection_established`.
async fn open_socket(
    opts: Arc<ClientOptions>,
    connector: Option<Connector>,
) -> Result<(Ws, Established), End> {
    let url = opts.endpoint();
    let limit = opts.connect_timeout;
    let deadline = Instant::now() + limit;
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, connector);
    let (mut ws, _) = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(End::lost(None, format!("cannot connect to {url}: {e}"))),
        Err(_) => {
            return Err(End::lost(
                None,
                format!("connecting to {url} timed out after {limit:?}"),
            ))
        }
    };
    let mut error_code = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(frame) => frame,
            Err(_) => {
                return Err(End::lost(
                    None,
                    format!("no connection_established within {limit:?}"),
                ))
            }
        };
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                let Ok(incoming) = frames::parse(text.as_str()) else {
                    continue;
                };
                match classify(&incoming.frame.event) {
                    EventKind::System(_, events::CONNECTION_ESTABLISHED) => {
                        let established =
                            serde_json::from_value::<Established>(incoming.system_data()).map_err(
                                |e| End::lost(None, format!("invalid connection_established: {e}")),
                            )?;
                        return Ok((ws, established));
                    }
                    EventKind::System(_, events::ERROR) => {
                        error_code = incoming
                            .system_data()
                            .get("code")
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|c| u16::try_from(c).ok());
                    }
                    _ => {}
                }
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let code = frame
                    .as_ref()
                    .map(|f| u16::from(f.code))
                    .filter(|c| *c != 1005)
                    .or(error_code);
                let reason = frame
                    .map(|f| f.reason.to_string())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "closed by the server".into());
                return Err(End::lost(code, reason));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(End::lost(error_code, format!("connection error: {e}"))),
            None => {
                return Err(End::lost(
                    error_code,
                    "closed before connection_established",
                ))
            }
        }
    }
}

/// rustls with the OS trust store and the ring provider.
fn default_tls_config() -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Connection, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tls_config_builds_with_the_ring_provider() {
        assert!(default_tls_config().is_ok());
    }
}
