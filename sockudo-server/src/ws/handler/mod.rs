//! The protocol handler of one connection: what each client frame means.
//!
//! Replies are queued on the connection's own outbound queue, behind any broadcast already
//! queued, so a client sees events in the order the node decided them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sockudo_core::auth::verify_user_auth;
use sockudo_core::channel::ChannelName;
use sockudo_core::protocol::events::{self, classify, EventKind, Family};
use sockudo_core::protocol::frame::{SigninData, SigninUserData, SubscribeData, UnsubscribeData};
use sockudo_core::protocol::{ClientFrame, ErrorCode, FrameError, OutboundFrame, ProtocolVersion};
use tokio::time::Instant;

use super::resume_waits::ResumeWaits;

mod resume;
mod subscribe;
use super::v2::{self, ResumePlan};
use crate::connection::Connection;
use crate::namespace::Namespace;
use crate::node::Node;
use crate::publish::{publish_event, EventToPublish};
use sockudo_core::adapter::{Broadcast, MemberChange, MemberEvent, PresenceLeave, PresenceMember};

/// Longest event name accepted from a client (Pusher's limit).
/// Longest presence user id.
const MAX_USER_ID_LEN: usize = 128;

/// What the session loop does after a frame.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Close(ErrorCode),
    /// Write a resume (replays, held frames, outcome frames) straight to the socket.
    Resume(ResumePlan),
}

/// Per-connection protocol state.
pub struct Session {
    node: Arc<Node>,
    conn: Arc<Connection>,
    ns: Arc<Namespace>,
    family: Family,
    channels: HashSet<Arc<str>>,
    /// V2: stream head at subscribe time per channel (`until_attach` backfill).
    attach: HashMap<Arc<str>, u64>,
    /// V2: resume positions waiting for their subscribe, and post-subscribe grace holds.
    waits: ResumeWaits,
    /// V2: a resume planned by the subscribe that just completed (its position was parked).
    planned: Option<ResumePlan>,
    window_start: Instant,
    window_count: u32,
    /// New subscriptions per second (`SUBSCRIBE_RATE_PER_SECOND` / `SUBSCRIBE_BURST`).
    subscribes: super::bucket::TokenBucket,
}

impl Session {
    pub fn new(node: Arc<Node>, conn: Arc<Connection>, ns: Arc<Namespace>) -> Self {
        let family = conn.protocol.family();
        let subscribes = super::bucket::TokenBucket::new(
            node.settings.subscribe_rate_per_second,
            node.settings.subscribe_burst,
        );
        Session {
            node,
            conn,
            ns,
            family,
            channels: HashSet::new(),
            attach: HashMap::new(),
            waits: ResumeWaits::default(),
            planned: None,
            window_start: Instant::now(),
            window_count: 0,
            subscribes,
        }
    }

    fn error(&self, message: &str, code: Option<ErrorCode>) {
        self.conn.send_text(OutboundFrame::error(
            self.family,
            message,
            code.map(ErrorCode::code),
        ));
    }

    fn subscription_error(&self, channel: &str, kind: &str, message: &str, status: u16) {
        self.conn.send_text(OutboundFrame::subscription_error(
            self.family,
            channel,
            kind,
            message,
            status,
        ));
    }

    pub fn reject_binary(&self) {
        self.error(
            "Binary frames are not supported: send UTF-8 JSON text frames",
            None,
        );
    }

    pub async fn handle_text(&mut self, text: &str) -> Flow {
        // Unit tests only: a way to make message handling panic (see `session::tests`).
        #[cfg(test)]
        if text.contains("\"event\":\"test:panic\"") {
            panic!("test: a panic inside message handling");
        }
        let frame = match ClientFrame::parse(text, self.node.settings.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.error(&format!("Invalid frame: {e}"), None);
                return Flow::Continue;
            }
        };
        match classify(&frame.event) {
            EventKind::System(_, name) => self.handle_system(name, &frame).await,
            EventKind::Client => {
                self.handle_client_event(&frame).await;
                Flow::Continue
            }
            EventKind::Internal(..) => {
                self.error("Internal events cannot be sent by clients", None);
                Flow::Continue
            }
            EventKind::Other => {
                self.error(
                    "Clients may only send client- events and protocol events",
                    None,
                );
                Flow::Continue
            }
        }
    }

    async fn handle_system(&mut self, name: &str, frame: &ClientFrame) -> Flow {
        match name {
            events::PING => {
                self.conn.send_text(OutboundFrame::pong(self.family));
            }
            events::PONG => {}
            events::SUBSCRIBE => match object_data::<SubscribeData>(frame) {
                Ok(d) => {
                    self.subscribe(d).await;
                    if let Some(plan) = self.planned.take() {
                        return Flow::Resume(plan);
                    }
                }
                Err(e) => self.error(&format!("Invalid subscribe: {e}"), None),
            },
            events::UNSUBSCRIBE => match object_data::<UnsubscribeData>(frame) {
                Ok(d) => {
                    if let Some(ch) = self.channels.take(d.channel.as_str()) {
                        self.leave(&ch).await;
                    }
                }
                Err(e) => self.error(&format!("Invalid unsubscribe: {e}"), None),
            },
            events::SIGNIN => return self.signin(frame).await,
            "resume" if self.conn.protocol == ProtocolVersion::V2 => {
                match object_data::<v2::ResumeData>(frame) {
                    Ok(d) => return self.resume(d).await,
                    Err(e) => self.error(&format!("Invalid resume: {e}"), None),
                }
            }
            "channel_history" if self.conn.protocol == ProtocolVersion::V2 => {
                match object_data::<v2::HistoryRequest>(frame) {
                    Ok(req) => {
                        let Some(channel) = self.channels.get(req.channel.as_str()).cloned() else {
                            self.error(
                                "channel_history requires a subscription to the channel",
                                None,
                            );
                            return Flow::Continue;
                        };
                        let attach = self.attach.get(&channel).copied();
                        match v2::channel_history(&self.node, &self.conn.app.id, &req, attach).await
                        {
                            Ok(frame) => {
                                self.conn.send_text(frame);
                            }
                            Err(msg) => self.error(&format!("channel_history failed: {msg}"), None),
                        }
                    }
                    Err(e) => self.error(&format!("Invalid channel_history: {e}"), None),
                }
            }
            "resume" | "channel_history" => {
                self.error("resume and channel_history require protocol 2", None)
            }
            other => self.error(
                &format!("Unsupported event: {}{other}", self.family.prefix()),
                None,
            ),
        }
        Flow::Continue
    }

    /// The app as the manager has it now, so that a rotated secret applies to the signatures
    /// made after the rotation (the connection keeps the copy it was opened with). The
    /// manager answers from its cache; its copy stands in only when the manager cannot answer
    /// at all (the app is then being closed or the database is down and the entry evicted).
    async fn current_app(&self) -> Arc<sockudo_core::app::App> {
        match self.node.apps.find_by_id(&self.conn.app.id).await {
            Ok(Some(app)) => app,
            other => {
                tracing::debug!(app_id = %self.conn.app.id, lookup = ?other.map(|a| a.is_some()), "app lookup failed; using the connection's copy");
                Arc::clone(&self.conn.app)
            }
        }
    }

    async fn signin(&mut self, frame: &ClientFrame) -> Flow {
        let app = self.current_app().await;
        let Ok(data) = object_data::<SigninData>(frame) else {
            self.error(
                "Invalid signin: data must hold auth and user_data",
                Some(ErrorCode::Unauthorized),
            );
            return Flow::Close(ErrorCode::Unauthorized);
        };
        if let Err(e) = verify_user_auth(
            &app.key,
            &app.secret,
            &self.conn.socket_id,
            &data.user_data,
            &data.auth,
        ) {
            self.error(
                &format!("Invalid signin signature: {e}"),
                Some(ErrorCode::Unauthorized),
            );
            return Flow::Close(ErrorCode::Unauthorized);
        }
        let user: SigninUserData = match serde_json::from_str::<SigninUserData>(&data.user_data) {
            Ok(u) if !u.id.0.is_empty() => u,
            _ => {
                self.error(
                    "Invalid signin: user_data must be JSON with a non-empty string id",
                    Some(ErrorCode::Unauthorized),
                );
                return Flow::Close(ErrorCode::Unauthorized);
            }
        };
        let user_id: Arc<str> = Arc::from(user.id.0);
        match self.conn.user_id() {
            Some(existing) if existing != user_id => {
                self.error(
                    "Already signed in as another user",
                    Some(ErrorCode::Unauthorized),
                );
                return Flow::Close(ErrorCode::Unauthorized);
            }
            Some(_) => {}
            None => {
                self.conn.set_user_id(Arc::clone(&user_id));
                self.ns.add_user(user_id, Arc::clone(&self.conn));
            }
        }
        self.conn
            .send_text(OutboundFrame::signin_success(self.family, &data.user_data));
        Flow::Continue
    }

    /// Internal broadcasts (member events) go through the adapter like any event but never
    /// touch the cache-channel store.
    /// `encode` builds the frame for a family; V1 and V2 connections each get their own.
    /// `member` carries the store's decision so receivers can drop it once a later decision
    /// about the same user was delivered (see `Namespace::fanout_member`).
    async fn broadcast_control(
        &self,
        channel: &ChannelName<'_>,
        encode: impl Fn(Family) -> String,
        except: Option<Arc<str>>,
        member: Option<MemberEvent>,
    ) {
        let mut msg = Broadcast::plain(
            &self.conn.app.id,
            channel.as_str(),
            encode(Family::Pusher).into(),
            except,
        );
        msg.frame_v2 = Some(encode(Family::Sockudo).into());
        msg.member = member;
        if let Err(e) = self.node.adapter.publish(msg).await {
            tracing::warn!(error = %e, channel = %channel, "member event broadcast failed");
        }
    }

    /// Remove this connection's local subscription, releasing its interest in the channel
    /// (the one place a subscription ends, so every `watch_channel` is balanced).
    fn unsubscribe_local(&self, channel: &str) -> Option<crate::namespace::Unsubscribed> {
        let left = self.ns.unsubscribe(channel, &self.conn.socket_id)?;
        let adapter = &self.node.adapter;
        adapter.unwatch_channel(&self.conn.app.id, channel);
        if left.vacated && adapter.routes_by_interest() {
            // From now on this node misses the channel's broadcasts: a hot ring kept from
            // before would offer a resume a run that ends before the stream's real head.
            self.ns.hot.forget(channel);
        }
        Some(left)
    }

    async fn leave(&mut self, channel: &str) {
        self.attach.remove(channel);
        self.waits.end_grace(channel);
        self.conn.forget_channel(channel);
        let ns = Arc::clone(&self.ns);
        let _presence_guard = match ns.presence_user_of(channel, &self.conn.socket_id) {
            Some(user) => Some(ns.presence_guard(channel, &user).await),
            None => None,
        };
        let Some(left) = self.unsubscribe_local(channel) else {
            return;
        };
        if let Some(w) = self.node.webhooks() {
            w.unsubscribed(&self.conn.app, channel).await; // webhooks
        }
        let Some(user) = left.node_last else { return };
        let left = match self
            .node
            .adapter
            .presence_leave(&self.conn.app.id, channel, &user)
            .await
        {
            Ok(left) => left,
            Err(e) => {
                // The store keeps this node's contribution; liveness sweeping removes it if
                // the node dies, and a later leave retries it.
                tracing::warn!(error = %e, channel, "presence leave failed");
                PresenceLeave::default()
            }
        };
        if left.gone {
            if let Ok(name) = ChannelName::parse(channel) {
                let encode = |f: Family| OutboundFrame::member_removed(f, channel, &user);
                let member = MemberEvent {
                    user_id: Arc::clone(&user),
                    seq: left.seq,
                    change: MemberChange::Removed,
                };
                self.broadcast_control(&name, encode, None, Some(member))
                    .await;
            }
            if let Some(w) = self.node.webhooks() {
                w.member_removed(&self.conn.app, channel, &user).await; // webhooks
            }
        }
    }

    fn client_event_allowed(&mut self) -> bool {
        let max = self.conn.app.max_client_events_per_second;
        if max == 0 {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start).as_secs() >= 1 {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        self.window_count <= max
    }

    async fn handle_client_event(&mut self, frame: &ClientFrame) {
        let app = Arc::clone(&self.conn.app);
        if !app.enable_client_messages {
            return self.error("Client events are not enabled for this app", None);
        }
        let Some(channel) = frame.channel.as_deref() else {
            return self.error("Client event must name a channel", None);
        };
        let name = match ChannelName::parse(channel) {
            Ok(n) => n,
            Err(e) => return self.error(&format!("Invalid channel name: {e}"), None),
        };
        if !name.kind().allows_client_events() {
            return self.error(
                "Client events are only allowed on private and presence channels",
                None,
            );
        }
        if !self.channels.contains(channel) {
            return self.error("Client event rejected: not subscribed to the channel", None);
        }
        let max_name = self.conn.app.max_event_name_length;
        if frame.event.len() > max_name {
            return self.error(
                &format!("Event name is longer than {max_name} characters"),
                None,
            );
        }
        let null;
        let data: &RawValue = match frame.data.as_deref() {
            Some(d) => d,
            None => {
                null = RawValue::NULL;
                null
            }
        };
        if data.get().len() > app.max_event_payload_bytes {
            return self.error(
                &format!(
                    "Client event data is over {} bytes",
                    app.max_event_payload_bytes
                ),
                None,
            );
        }
        if !self.client_event_allowed() {
            metrics::counter!(crate::metrics::RATE_LIMITED, "scope" => "client_event").increment(1);
            return self.error(
                ErrorCode::ClientEventRateLimited.message(),
                Some(ErrorCode::ClientEventRateLimited),
            );
        }
        let user_id = if name.is_presence() {
            self.ns.presence_user_of(channel, &self.conn.socket_id)
        } else {
            None
        };
        let ev = EventToPublish {
            event: &frame.event,
            data,
            user_id: user_id.as_deref(),
            message_id: None,
            extras: None,
            except_socket: Some(&self.conn.socket_id),
        };
        if let Err(e) = publish_event(&self.node, &app.id, &name, ev).await {
            metrics::counter!(crate::metrics::PUBLISHES_FAILED, "app_id" => app.id.clone(), "source" => "client_event").increment(1);
            tracing::warn!(app_id = %app.id, socket_id = %self.conn.socket_id, error = %e, channel, "client event publish failed");
            self.error("Client event could not be delivered", None);
            return;
        }
        metrics::counter!(crate::metrics::PUBLISHES_ACCEPTED, "app_id" => app.id.clone(), "source" => "client_event").increment(1);
        if let Some(w) = self.node.webhooks() {
            w.client_event(
                &app,
                channel,
                &frame.event,
                data,
                &self.conn.socket_id,
                user_id.as_deref(),
            ); // webhooks
        }
    }

    /// Leave every channel (member_removed where this was the user's last connection).
    pub async fn cleanup(&mut self) {
        let channels: Vec<Arc<str>> = self.channels.drain().collect();
        for ch in channels {
            self.leave(&ch).await;
        }
    }
}

/// The `data` of a system event as `T`. It must be a JSON object (inline or double-encoded):
/// serde alone would also accept an array holding the fields in order.
fn object_data<T: DeserializeOwned>(frame: &ClientFrame) -> Result<T, FrameError> {
    let map = frame.system_data::<serde_json::Map<String, serde_json::Value>>()?;
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| FrameError::InvalidData(e.to_string()))
}

/// Most members a connection's view of one presence channel may list: the app's limit with
/// room for additions that arrive before the removals they follow (see
/// [`crate::presence_view`]).
fn presence_view_cap(max_members: usize) -> usize {
    max_members.saturating_mul(2).max(64)
}

fn presence_data(members: &[PresenceMember]) -> String {
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let hash: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .map(|m| {
            let v = m
                .info
                .as_deref()
                .and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or(serde_json::Value::Null);
            (m.user_id.clone(), v)
        })
        .collect();
    serde_json::json!({ "presence": { "ids": ids, "hash": hash, "count": members.len() } })
        .to_string()
}
