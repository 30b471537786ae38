//! Test clients: [`TestClient`] speaks the Pusher WebSocket protocol (7) for assertions, and
//! [`ApiClient`] signs Pusher HTTP API requests.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sockudo_core::auth::{sign_api_request, sign_channel, sign_user};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::TestkitError;

/// How long connecting and subscribing may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One Pusher frame as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `event` name.
    pub event: String,
    /// The `channel`, when present.
    pub channel: Option<String>,
    /// The `data`: for `pusher:*` and `pusher_internal:*` events decoded from its JSON string;
    /// for app events exactly as sent (usually a string, see [`Event::data_json`]).
    pub data: Value,
    /// The `user_id` (client events on presence channels).
    pub user_id: Option<String>,
    /// The whole frame.
    pub raw: Value,
}

impl Event {
    fn from_frame(raw: Value) -> Result<Event, TestkitError> {
        let event = raw
            .get("event")
            .and_then(Value::as_str)
            .ok_or_else(|| TestkitError::Protocol(format!("frame without an event name: {raw}")))?
            .to_string();
        let channel = raw
            .get("channel")
            .and_then(Value::as_str)
            .map(str::to_string);
        let user_id = raw
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut data = raw.get("data").cloned().unwrap_or(Value::Null);
        if is_system_event(&event) {
            if let Value::String(text) = &data {
                data = serde_json::from_str(text).map_err(|e| {
                    TestkitError::Protocol(format!(
                        "{event}: data is not a JSON string ({e}): {raw}"
                    ))
                })?;
            }
        }
        Ok(Event {
            event,
            channel,
            data,
            user_id,
            raw,
        })
    }

    /// `data` as a string, when it is one.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_str()
    }

    /// `data` decoded as JSON when it is a string holding JSON, else `data` itself.
    pub fn data_json(&self) -> Value {
        match &self.data {
            Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| self.data.clone()),
            other => other.clone(),
        }
    }
}

/// Whether `event` is a system event (`pusher:`, `pusher_internal:`, `sockudo:`,
/// `sockudo_internal:`), whose `data` is a JSON-encoded string.
fn is_system_event(event: &str) -> bool {
    [
        "pusher:",
        "pusher_internal:",
        "sockudo:",
        "sockudo_internal:",
    ]
    .iter()
    .any(|p| event.starts_with(p))
}

/// `event` without its system prefix (`pusher:x`, `sockudo_internal:x` → `x`); other names as
/// they are.
fn system_name(event: &str) -> &str {
    [
        "pusher:",
        "pusher_internal:",
        "sockudo:",
        "sockudo_internal:",
    ]
    .iter()
    .find_map(|p| event.strip_prefix(p))
    .unwrap_or(event)
}

/// How a WebSocket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The server sent a close frame (a frame without a code counts as 1005).
    Frame {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The TCP connection ended without a close frame (a crashed or killed node).
    Abrupt(String),
}

impl fmt::Display for CloseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseOutcome::Frame { code, reason } => write!(f, "close frame {code} {reason:?}"),
            CloseOutcome::Abrupt(why) => write!(f, "dropped without a close frame: {why}"),
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Pusher protocol 7 client for tests.
///
/// Receiving methods skip what they are not looking for; events that arrive while
/// [`subscribe`](Self::subscribe) waits are kept and seen by the next receive. `pusher:ping`
/// from the server is answered with `pusher:pong` automatically.
pub struct TestClient {
    ws: Ws,
    socket_id: String,
    activity_timeout: u64,
    pending: VecDeque<Event>,
    closed: Option<CloseOutcome>,
    /// `pusher` (protocol 7) or `sockudo` (protocol 2): the family of the frames we send.
    family: &'static str,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("socket_id", &self.socket_id)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl TestClient {
    /// Connect to a full WebSocket URL (`ws://host:port/app/{key}?protocol=7`) and wait for
    /// `pusher:connection_established`.
    pub async fn connect(url: &str) -> Result<TestClient, TestkitError> {
        let (ws, _) = tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| {
                TestkitError::timeout(format!("websocket connect to {url}"), DEFAULT_TIMEOUT)
            })??;
        let family = if url.contains("protocol=2") {
            "sockudo"
        } else {
            "pusher"
        };
        let mut client = TestClient {
            ws,
            socket_id: String::new(),
            activity_timeout: 0,
            pending: VecDeque::new(),
            closed: None,
            family,
        };
        let deadline = Deadline::after(DEFAULT_TIMEOUT);
        loop {
            let event = client
                .next_event(deadline, "connection_established")
                .await?;
            match event.event.as_str() {
                "pusher:connection_established" | "sockudo:connection_established" => {
                    client.socket_id = event
                        .data
                        .get("socket_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            TestkitError::Protocol(format!(
                                "connection_established without socket_id: {}",
                                event.raw
                            ))
                        })?
                        .to_string();
                    client.activity_timeout = event
                        .data
                        .get("activity_timeout")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    return Ok(client);
                }
                "pusher:error" | "sockudo:error" => {
                    return Err(TestkitError::Protocol(format!(
                        "connection refused: {}",
                        event.raw
                    )))
                }
                _ => {}
            }
        }
    }

    /// Connect with protocol V2: `url` is a protocol 7 URL (as [`crate::ws_url`] builds) or
    /// any URL; its `protocol` parameter is replaced by `2`. The client then speaks the
    /// `sockudo:` family.
    pub async fn connect_v2(url: &str) -> Result<TestClient, TestkitError> {
        TestClient::connect(&v2_url(url)).await
    }

    /// Whether this client speaks protocol V2.
    pub fn is_v2(&self) -> bool {
        self.family == "sockudo"
    }

    /// Send one raw text frame as is (need not be JSON).
    pub async fn send_raw(&mut self, text: &str) -> Result<(), TestkitError> {
        self.ws.send(Message::text(text.to_string())).await?;
        Ok(())
    }

    /// V2: send `sockudo:resume` with `channel_positions` (`{"<channel>": {"serial", "stream_id",
    /// "last_message_id"?}}`) and return every frame up to and including
    /// `sockudo:resume_success` (replays, `resume_failed` frames, live events), in order.
    pub async fn resume(
        &mut self,
        channel_positions: Value,
        timeout: Duration,
    ) -> Result<Vec<Event>, TestkitError> {
        self.send_json(&json!({ "event": "sockudo:resume", "data": { "channel_positions": channel_positions } })).await?;
        let deadline = Deadline::after(timeout);
        let mut out = Vec::new();
        loop {
            let event = self.next_event(deadline, "sockudo:resume_success").await?;
            let done = event.event == "sockudo:resume_success";
            out.push(event);
            if done {
                return Ok(out);
            }
        }
    }

    /// V2: send `sockudo:channel_history` with `request` (`{"channel", "limit"?, ...}`) and
    /// wait for the answer for that channel (or an error event).
    pub async fn channel_history(
        &mut self,
        request: Value,
        timeout: Duration,
    ) -> Result<Event, TestkitError> {
        let channel = request
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.send_json(&json!({ "event": "sockudo:channel_history", "data": request }))
            .await?;
        let deadline = Deadline::after(timeout);
        let mut skipped = Vec::new();
        let outcome = loop {
            match self
                .read_event(deadline, &format!("channel_history of {channel}"))
                .await
            {
                Ok(e)
                    if e.event == "sockudo:channel_history"
                        && e.channel.as_deref() == Some(channel.as_str()) =>
                {
                    break Ok(e)
                }
                Ok(e) if e.event == "sockudo:error" => {
                    break Err(TestkitError::Protocol(format!(
                        "channel_history failed: {}",
                        e.raw
                    )))
                }
                Ok(e) => skipped.push(e),
                Err(e) => break Err(e),
            }
        };
        self.pending.extend(skipped);
        outcome
    }

    /// The events already received but not yet consumed (for example those that arrived
    /// while [`subscribe`](Self::subscribe) waited), without reading the socket.
    pub fn take_pending(&mut self) -> Vec<Event> {
        self.pending.drain(..).collect()
    }

    /// Every event until nothing has arrived for `quiet` (or `max` has passed, or the socket
    /// closed): "wait for quiet" when counting deliveries.
    pub async fn events_until_quiet(
        &mut self,
        quiet: Duration,
        max: Duration,
    ) -> Result<Vec<Event>, TestkitError> {
        let end = Instant::now() + max;
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(out);
            }
            let wait = quiet.min(end - now);
            match self.next_event(Deadline::after(wait), "events").await {
                Ok(event) => out.push(event),
                Err(TestkitError::Timeout { .. } | TestkitError::Closed(..)) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket id from `connection_established`.
    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// The `activity_timeout` from `connection_established`, in seconds.
    pub fn activity_timeout(&self) -> u64 {
        self.activity_timeout
    }

    /// Send any JSON frame.
    pub async fn send_json(&mut self, frame: &Value) -> Result<(), TestkitError> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Subscribe to a public (or cache) channel and wait for `subscription_succeeded`,
    /// returning it.
    pub async fn subscribe(&mut self, channel: &str) -> Result<Event, TestkitError> {
        self.subscribe_with(json!({ "channel": channel })).await
    }

    /// Subscribe to a private channel, signing the auth with `key`/`secret`.
    pub async fn subscribe_private(
        &mut self,
        channel: &str,
        key: &str,
        secret: &str,
    ) -> Result<Event, TestkitError> {
        let auth = sign_channel(key, secret, &self.socket_id, channel, None);
        self.subscribe_with(json!({ "channel": channel, "auth": auth }))
            .await
    }

    /// Join a presence channel as `user_id` with `info`; the returned event's data holds the
    /// members (`{"presence":{"ids","hash","count"}}`).
    pub async fn subscribe_presence(
        &mut self,
        channel: &str,
        key: &str,
        secret: &str,
        user_id: &str,
        info: Value,
    ) -> Result<Event, TestkitError> {
        let channel_data = json!({ "user_id": user_id, "user_info": info }).to_string();
        let auth = sign_channel(key, secret, &self.socket_id, channel, Some(&channel_data));
        self.subscribe_with(
            json!({ "channel": channel, "auth": auth, "channel_data": channel_data }),
        )
        .await
    }

    /// Send `pusher:subscribe` with `data` and wait for the outcome for `data.channel`.
    pub async fn subscribe_with(&mut self, data: Value) -> Result<Event, TestkitError> {
        let channel = data
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.send_json(&json!({ "event": format!("{}:subscribe", self.family), "data": data }))
            .await?;
        let deadline = Deadline::after(DEFAULT_TIMEOUT);
        let what = format!("subscription to {channel}");
        let mut skipped = Vec::new();
        let outcome = loop {
            let event = match self.read_event(deadline, &what).await {
                Ok(event) => event,
                Err(e) => break Err(e),
            };
            let ours = event.channel.as_deref() == Some(channel.as_str());
            let system = is_system_event(&event.event);
            match (system, system_name(&event.event)) {
                (true, "subscription_succeeded") if ours => break Ok(event),
                (true, "subscription_error") if ours => {
                    break Err(TestkitError::Protocol(format!(
                        "subscription to {channel} failed: {}",
                        event.raw
                    )))
                }
                (true, "error") => {
                    break Err(TestkitError::Protocol(format!(
                        "subscription to {channel} failed: {}",
                        event.raw
                    )))
                }
                _ => skipped.push(event),
            }
        };
        self.pending.extend(skipped);
        outcome
    }

    /// Sign in as `user_id` (`pusher:signin`, signed with `key`/`secret`) and wait for
    /// `signin_success`.
    pub async fn signin(
        &mut self,
        user_id: &str,
        key: &str,
        secret: &str,
    ) -> Result<Event, TestkitError> {
        let user_data = json!({ "id": user_id }).to_string();
        let auth = sign_user(key, secret, &self.socket_id, &user_data);
        self.send_json(&json!({ "event": format!("{}:signin", self.family), "data": { "auth": auth, "user_data": user_data } })).await?;
        let deadline = Deadline::after(DEFAULT_TIMEOUT);
        let mut skipped = Vec::new();
        let outcome = loop {
            match self.read_event(deadline, "signin_success").await {
                Ok(e) if is_system_event(&e.event) && system_name(&e.event) == "signin_success" => {
                    break Ok(e)
                }
                Ok(e) if is_system_event(&e.event) && system_name(&e.event) == "error" => {
                    break Err(TestkitError::Protocol(format!("signin failed: {}", e.raw)))
                }
                Ok(e) => skipped.push(e),
                Err(e) => break Err(e),
            }
        };
        self.pending.extend(skipped);
        outcome
    }

    /// Send `pusher:unsubscribe`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), TestkitError> {
        self.send_json(&json!({ "event": format!("{}:unsubscribe", self.family), "data": { "channel": channel } })).await
    }

    /// Send a client event (`client-*`) on a channel.
    pub async fn trigger(
        &mut self,
        channel: &str,
        event: &str,
        data: Value,
    ) -> Result<(), TestkitError> {
        self.send_json(&json!({ "event": event, "channel": channel, "data": data }))
            .await
    }

    /// Wait up to `timeout` for an event named `name`, skipping others.
    pub async fn recv_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<Event, TestkitError> {
        let deadline = Deadline::after(timeout);
        loop {
            let event = self
                .next_event(deadline, &format!("event {name:?}"))
                .await?;
            if event.event == name {
                return Ok(event);
            }
        }
    }

    /// Like [`recv_event`](Self::recv_event), also requiring the channel.
    pub async fn recv_event_on(
        &mut self,
        channel: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Event, TestkitError> {
        let deadline = Deadline::after(timeout);
        loop {
            let event = self
                .next_event(deadline, &format!("event {name:?} on {channel}"))
                .await?;
            if event.event == name && event.channel.as_deref() == Some(channel) {
                return Ok(event);
            }
        }
    }

    /// Fail if an event named `name` arrives within `dur`. Other events are consumed; the
    /// socket closing ends the watch successfully.
    pub async fn expect_no_event(&mut self, name: &str, dur: Duration) -> Result<(), TestkitError> {
        for event in self.events_until(dur).await? {
            if event.event == name {
                return Err(TestkitError::UnexpectedEvent {
                    name: event.event,
                    frame: event.raw,
                });
            }
        }
        Ok(())
    }

    /// Every event received within `dur` (fewer if the socket closes first).
    pub async fn events_until(&mut self, dur: Duration) -> Result<Vec<Event>, TestkitError> {
        let deadline = Deadline::after(dur);
        let mut out = Vec::new();
        loop {
            match self.next_event(deadline, "events").await {
                Ok(event) => out.push(event),
                Err(TestkitError::Timeout { .. } | TestkitError::Closed(..)) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait up to `timeout` for the socket to end and say how.
    pub async fn closed(&mut self, timeout: Duration) -> Result<CloseOutcome, TestkitError> {
        let deadline = Deadline::after(timeout);
        self.pending.clear();
        loop {
            match self.read_event(deadline, "the socket to close").await {
                Ok(_) => {}
                Err(TestkitError::Closed(outcome, _)) => return Ok(outcome),
                Err(e) => return Err(e),
            }
        }
    }

    /// The close code once the socket ends: `Some(code)` for a close frame, `None` when it
    /// dropped without one.
    pub async fn close_code(&mut self, timeout: Duration) -> Result<Option<u16>, TestkitError> {
        Ok(match self.closed(timeout).await? {
            CloseOutcome::Frame { code, .. } => Some(code),
            CloseOutcome::Abrupt(_) => None,
        })
    }

    /// How the socket ended, if it has.
    pub fn close_outcome(&self) -> Option<&CloseOutcome> {
        self.closed.as_ref()
    }

    /// Close from the client side (1000) and wait briefly for the server's answer.
    pub async fn close(mut self) -> Result<(), TestkitError> {
        if self.closed.is_none() {
            self.ws.close(None).await?;
            let _ = self.closed(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// The next event, pending ones first.
    async fn next_event(&mut self, deadline: Deadline, what: &str) -> Result<Event, TestkitError> {
        match self.pending.pop_front() {
            Some(event) => Ok(event),
            None => self.read_event(deadline, what).await,
        }
    }

    /// Read the socket until one Pusher event arrives, the deadline passes, or it closes.
    async fn read_event(&mut self, deadline: Deadline, what: &str) -> Result<Event, TestkitError> {
        loop {
            if let Some(outcome) = &self.closed {
                return Err(TestkitError::Closed(outcome.clone(), what.to_string()));
            }
            let next = match tokio::time::timeout_at(deadline.at, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => return Err(TestkitError::timeout(what, deadline.total)),
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    let event = Event::from_frame(serde_json::from_str(text.as_str())?)?;
                    if event.event == "pusher:ping" || event.event == "sockudo:ping" {
                        self.send_json(
                            &json!({ "event": format!("{}:pong", self.family), "data": {} }),
                        )
                        .await?;
                    }
                    return Ok(event);
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(match frame {
                        Some(frame) => CloseOutcome::Frame {
                            code: u16::from(frame.code),
                            reason: frame.reason.to_string(),
                        },
                        None => CloseOutcome::Frame {
                            code: u16::from(CloseCode::Status),
                            reason: String::new(),
                        },
                    });
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(TestkitError::Protocol(
                        "the server sent a binary frame".into(),
                    ))
                }
                Some(Ok(_)) => {} // ping/pong frames: tungstenite answers pings itself
                Some(Err(e)) => self.closed = Some(CloseOutcome::Abrupt(e.to_string())),
                None => self.closed = Some(CloseOutcome::Abrupt("stream ended".into())),
            }
        }
    }
}

/// A Pusher HTTP API client that signs every request.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    app_id: String,
    key: String,
    secret: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `http_url` is the node's (or balancer's) base URL, e.g. `http://127.0.0.1:6001`.
    pub fn new(http_url: &str, app_id: &str, key: &str, secret: &str) -> ApiClient {
        ApiClient {
            base: http_url.trim_end_matches('/').to_string(),
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The same credentials against another base URL.
    pub fn with_base(&self, http_url: &str) -> ApiClient {
        ApiClient {
            base: http_url.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    /// `POST /apps/{id}/events` to one channel. A string `data` is sent as is, anything else
    /// as its JSON text (as the SDKs do). Returns the status and the JSON body.
    pub async fn trigger(
        &self,
        channel: &str,
        event: &str,
        data: Value,
    ) -> Result<(u16, Value), TestkitError> {
        self.post("/events", &event_body(channel, event, data))
            .await
    }

    /// [`trigger`](Self::trigger) with an `idempotency_key` in the body.
    pub async fn trigger_with_key(
        &self,
        channel: &str,
        event: &str,
        data: Value,
        idempotency_key: &str,
    ) -> Result<(u16, Value), TestkitError> {
        let mut body = event_body(channel, event, data);
        body["idempotency_key"] = Value::String(idempotency_key.into());
        self.post("/events", &body).await
    }

    /// `POST /apps/{id}/events` with any body (a `name`/`data`/`channel(s)` object, possibly
    /// with `socket_id`, `message_id`, `idempotency_key`, ...).
    pub async fn trigger_body(&self, body: &Value) -> Result<(u16, Value), TestkitError> {
        self.post("/events", body).await
    }

    /// A signed POST with extra request headers (e.g. `X-Idempotency-Key`); returns the
    /// status, the response headers (names lower-case) and the JSON body.
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<(String, String)>, Value), TestkitError> {
        self.request_full("POST", path, &[], serde_json::to_vec(body)?, headers)
            .await
    }

    /// A signed GET returning the response headers too (names lower-case).
    pub async fn get_with_headers(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Vec<(String, String)>, Value), TestkitError> {
        self.request_full("GET", path, params, Vec::new(), &[])
            .await
    }

    /// A signed GET. `path` is either absolute (`/apps/1/channels`) or relative to the app
    /// (`/channels` → `/apps/{id}/channels`).
    pub async fn get(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), TestkitError> {
        self.request("GET", path, params, Vec::new()).await
    }

    /// A signed POST of a JSON body; `path` as in [`get`](Self::get).
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), TestkitError> {
        self.request("POST", path, &[], serde_json::to_vec(body)?)
            .await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, Value), TestkitError> {
        let (status, _, json) = self.request_full(method, path, params, body, &[]).await?;
        Ok((status, json))
    }

    async fn request_full(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<(String, String)>, Value), TestkitError> {
        let path = if path.starts_with("/apps/") {
            path.to_string()
        } else {
            format!("/apps/{}/{}", self.app_id, path.trim_start_matches('/'))
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let query = sign_api_request(&self.key, &self.secret, method, &path, params, &body, now);
        let url = format!("{}{}?{}", self.base, path, query);
        let mut request = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body),
            _ => self.http.get(url),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.timeout(DEFAULT_TIMEOUT).send().await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let text = response.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, json))
    }
}

/// A point in time plus the wait it came from, for error messages.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }
}

/// `url` with its `protocol` query parameter set to `2` (added when missing).
pub fn v2_url(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("protocol="))
        .map(str::to_string)
        .collect();
    params.insert(0, "protocol=2".into());
    format!("{base}?{}", params.join("&"))
}

fn event_body(channel: &str, event: &str, data: Value) -> Value {
    let data = match data {
        Value::String(text) => text,
        other => other.to_string(),
    };
    json!({ "name": event, "channels": [channel], "data": data })
}
