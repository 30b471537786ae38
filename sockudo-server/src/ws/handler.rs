//! The protocol handler of one connection: what each client frame means.
//!
//! Replies are queued on the connection's own outbound queue, behind any broadcast already
//! queued, so a client sees events in the order the node decided them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sockudo_core::auth::{verify_channel_auth, verify_user_auth};
use sockudo_core::channel::{ChannelKind, ChannelName};
use sockudo_core::protocol::events::{self, classify, EventKind, Family};
use sockudo_core::protocol::frame::{
    PresenceChannelData, SigninData, SigninUserData, SubscribeData, UnsubscribeData,
};
use sockudo_core::protocol::{ClientFrame, ErrorCode, FrameError, OutboundFrame, ProtocolVersion};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::resume_waits::ResumeWaits;
use super::v2::{self, ResumePlan};
use crate::connection::AfterJoin;
use crate::connection::Connection;
use crate::namespace::Namespace;
use crate::node::Node;
use crate::presence_view::PresenceView;
use crate::publish::{cache_channel_key, decode_cached, publish_event, EventToPublish};
use sockudo_core::adapter::{
    Broadcast, MemberChange, MemberEvent, PresenceJoin, PresenceLeave, PresenceMember,
};

/// Longest event name accepted from a client (Pusher's limit).
const MAX_EVENT_NAME_LEN: usize = 200;
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
}

impl Session {
    pub fn new(node: Arc<Node>, conn: Arc<Connection>, ns: Arc<Namespace>) -> Self {
        let family = conn.protocol.family();
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
            events::SIGNIN => return self.signin(frame),
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

    fn signin(&mut self, frame: &ClientFrame) -> Flow {
        let app = &self.conn.app;
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

    async fn subscribe(&mut self, d: SubscribeData) {
        let name = match ChannelName::parse(&d.channel) {
            Ok(n) => n,
            Err(e) => {
                return self.subscription_error(
                    &d.channel,
                    "InvalidChannel",
                    &format!("Invalid channel name: {e}"),
                    400,
                )
            }
        };
        let app = Arc::clone(&self.conn.app);
        let socket_id = Arc::clone(&self.conn.socket_id);
        let mut presence = None;
        match name.kind() {
            ChannelKind::Public => {}
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let auth = d.auth.as_deref().unwrap_or("");
                if let Err(e) = verify_channel_auth(
                    &app.key,
                    &app.secret,
                    &socket_id,
                    name.as_str(),
                    None,
                    auth,
                ) {
                    return self.subscription_error(
                        name.as_str(),
                        "AuthError",
                        &format!("Invalid signature: {e}"),
                        401,
                    );
                }
            }
            ChannelKind::Presence => {
                let Some(channel_data) = d.channel_data.as_deref() else {
                    return self.subscription_error(
                        name.as_str(),
                        "AuthError",
                        "Presence channels require channel_data",
                        401,
                    );
                };
                let auth = d.auth.as_deref().unwrap_or("");
                if let Err(e) = verify_channel_auth(
                    &app.key,
                    &app.secret,
                    &socket_id,
                    name.as_str(),
                    Some(channel_data),
                    auth,
                ) {
                    return self.subscription_error(
                        name.as_str(),
                        "AuthError",
                        &format!("Invalid signature: {e}"),
                        401,
                    );
                }
                let member: PresenceChannelData = match serde_json::from_str(channel_data) {
                    Ok(m) => m,
                    Err(_) => {
                        return self.subscription_error(
                            name.as_str(),
                            "AuthError",
                            "channel_data must be JSON with a user_id",
                            400,
                        )
                    }
                };
                if member.user_id.0.is_empty() || member.user_id.0.len() > MAX_USER_ID_LEN {
                    return self.subscription_error(
                        name.as_str(),
                        "AuthError",
                        "user_id must be 1 to 128 characters",
                        400,
                    );
                }
                let info_len = member.user_info.as_ref().map_or(0, |i| i.get().len());
                if info_len > app.max_presence_user_info_bytes {
                    let msg = format!(
                        "user_info is {info_len} bytes, over the limit of {}",
                        app.max_presence_user_info_bytes
                    );
                    return self.subscription_error(name.as_str(), "LimitReached", &msg, 413);
                }
                presence = Some((Arc::<str>::from(member.user_id.0), member.user_info));
            }
            ChannelKind::ServerToUser => {
                let owner = name.server_to_user_id();
                if self.conn.user_id().as_deref() != owner {
                    return self.subscription_error(
                        name.as_str(),
                        "AuthError",
                        "Only the signed-in user may subscribe to its own user channel",
                        403,
                    );
                }
            }
        }

        let presence_user = presence.as_ref().map(|(u, _)| Arc::clone(u));
        let channel: Arc<str> = Arc::from(name.as_str());
        // Held until the member event (if any) is published; see `Namespace::presence_guard`.
        let ns = Arc::clone(&self.ns);
        let _presence_guard = match &presence_user {
            Some(user) => Some(ns.presence_guard(&channel, user).await),
            None => None,
        };
        // No channel frame may reach the client before subscription_succeeded: a member
        // event delivered earlier may postdate the snapshot below (which would then undo it).
        self.conn.begin_join(&channel);
        let joined = self.ns.subscribe(name.as_str(), &self.conn, presence_user);
        let mut member_added = None;
        let mut view = None;
        let data = match &presence {
            None => String::from("{}"),
            Some((user, info)) => {
                let info_text = info.as_deref().map(RawValue::get);
                let outcome = if joined.node_first {
                    let join = PresenceJoin {
                        app_id: &app.id,
                        channel: &channel,
                        user_id: user,
                        info: info_text,
                        max_members: app.max_presence_members,
                    };
                    self.node
                        .adapter
                        .presence_join(join)
                        .await
                        .map(|o| (o.full, o.first.then_some(o.seq), o.members, o.snapshot_seq))
                } else {
                    self.node
                        .adapter
                        .presence_members(&app.id, &channel)
                        .await
                        .map(|m| (false, None, m.members, m.seq))
                };
                match outcome {
                    Ok((false, first, members, snapshot_seq)) => {
                        if let Some(seq) = first {
                            member_added = Some((Arc::clone(user), info.clone(), seq));
                        }
                        // Member events already reflected in this snapshot must not reach
                        // the subscriber (a doubled join or a phantom leave).
                        view = Some(PresenceView::from_snapshot(
                            snapshot_seq,
                            members.iter().map(|m| m.user_id.as_str()),
                            presence_view_cap(app.max_presence_members),
                        ));
                        presence_data(&members)
                    }
                    Ok((true, _, _, _)) => {
                        self.ns.unsubscribe(&channel, &socket_id);
                        self.conn.cancel_join(&channel);
                        let msg = format!(
                            "Presence channel is full ({} members)",
                            app.max_presence_members
                        );
                        return self.subscription_error(&channel, "LimitReached", &msg, 403);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel = %channel, "presence store unavailable");
                        let left = self.ns.unsubscribe(&channel, &socket_id);
                        self.conn.cancel_join(&channel);
                        if let Some(u) = left.and_then(|u| u.node_last) {
                            // Undo a join that may have reached the store before the error.
                            let _ = self
                                .node
                                .adapter
                                .presence_leave(&app.id, &channel, &u)
                                .await;
                        }
                        return self.subscription_error(
                            &channel,
                            "ServiceUnavailable",
                            "Presence is temporarily unavailable",
                            503,
                        );
                    }
                }
            }
        };
        let position = match self.conn.protocol {
            ProtocolVersion::V2 => v2::subscribe_fields(&self.node, &app.id, &channel).await,
            ProtocolVersion::V1 => None,
        };
        self.channels.insert(Arc::clone(&channel));
        let succeeded = match &position {
            Some(position) => {
                self.attach.insert(Arc::clone(&channel), position.1);
                // From here on a serial that never arrives is a gap the node repairs.
                self.ns.sequence_from(&channel, &position.0, position.1);
                let data = v2::with_stream_fields(&data, position);
                OutboundFrame::subscription_succeeded_at(
                    self.family,
                    &channel,
                    &data,
                    &position.0,
                    position.1,
                )
            }
            None => OutboundFrame::subscription_succeeded(self.family, &channel, &data),
        };
        self.conn.send_text(succeeded);
        // V2 with history: a resume of this channel may be parked (it came first) or may
        // follow; either way its replay must precede the live frames, which stay held.
        let positioned = self.conn.protocol == ProtocolVersion::V2 && self.node.history.is_some();
        let parked = positioned.then(|| self.waits.take(&channel)).flatten();
        let grace = self.node.settings.resume_grace_ms;
        let after = if parked.is_some() || (positioned && grace > 0) {
            AfterJoin::Hold
        } else {
            AfterJoin::Release
        };
        self.conn.finish_join(&channel, view, after);
        if after == AfterJoin::Hold && parked.is_none() {
            let deadline = Instant::now() + std::time::Duration::from_millis(grace);
            self.waits.start_grace(Arc::clone(&channel), deadline);
        }
        // webhooks: begin
        if let Some(w) = self.node.webhooks() {
            w.subscribed(&app, &channel).await;
            if let Some((user, _, _)) = &member_added {
                w.member_added(&app, &channel, user).await;
            }
        }
        // webhooks: end
        if let Some((user, info, seq)) = member_added {
            let encode =
                |f: Family| OutboundFrame::member_added(f, &channel, &user, info.as_deref());
            let member = MemberEvent {
                user_id: Arc::clone(&user),
                seq,
                change: MemberChange::Added,
            };
            self.broadcast_control(&name, encode, Some(Arc::clone(&socket_id)), Some(member))
                .await;
        }
        if name.is_cache() && joined.new_subscription {
            match self
                .node
                .cache
                .get(&cache_channel_key(&app.id, &channel))
                .await
            {
                Ok(Some(entry)) => {
                    if let Some(f) = decode_cached(&entry)
                        .and_then(|(_, f)| Utf8Bytes::try_from(entry.slice_ref(f)).ok())
                    {
                        self.conn.send(f);
                    }
                }
                Ok(None) => {
                    self.conn
                        .send_text(OutboundFrame::cache_miss(self.family, &channel));
                    if let Some(w) = self.node.webhooks() {
                        w.cache_miss(&app, &channel); // webhooks
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, channel = %channel, "cache channel lookup failed")
                }
            }
        }
        if let Some(position) = parked {
            let subscribed = |name: &str| (name == &*channel).then(|| Arc::clone(&channel));
            let positions = vec![(channel.to_string(), position)];
            self.planned = Some(
                v2::plan_resume(&self.node, &self.conn, &self.ns, &subscribed, positions).await,
            );
        }
    }

    /// `sockudo:resume`: channels already subscribed are resumed now; the others' positions
    /// wait (bounded) for their subscribe (see [`ResumeWaits`]).
    async fn resume(&mut self, d: v2::ResumeData) -> Flow {
        let deadline =
            Instant::now() + std::time::Duration::from_secs(self.node.settings.resume_pending_secs);
        let mut now = Vec::new();
        for (name, position) in d.channel_positions {
            if self.channels.contains(name.as_str()) {
                self.waits.end_grace(&name);
                now.push((name, position));
            } else {
                let client = v2::client_position(&position);
                if !self.waits.park(name.clone(), position, deadline) {
                    let (_, frame) = v2::unresumable(
                        &name,
                        &client,
                        "too many channels waiting for their subscribe",
                    );
                    self.conn.send_text(frame);
                }
            }
        }
        if now.is_empty() {
            return Flow::Continue;
        }
        let channels = &self.channels;
        let subscribed = |name: &str| channels.get(name).cloned();
        Flow::Resume(v2::plan_resume(&self.node, &self.conn, &self.ns, &subscribed, now).await)
    }

    /// Whether a resume wait has a deadline pending (checked by the connection loop).
    pub fn has_waits(&self) -> bool {
        !self.waits.is_empty()
    }

    /// The earliest resume-wait deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waits.next_deadline()
    }

    /// Act on resume waits that are due: a parked position whose channel was never
    /// subscribed fails closed; a grace hold with no resume is released in order.
    pub fn on_deadline(&mut self, now: Instant) {
        let expired = self.waits.expired(now);
        for (name, position) in expired.parked {
            let reason = format!(
                "the channel was not subscribed within {} s of the resume",
                self.node.settings.resume_pending_secs
            );
            let (_, frame) = v2::unresumable(&name, &v2::client_position(&position), &reason);
            self.conn.send_text(frame);
        }
        for channel in expired.grace {
            self.conn.release_to_queue(&channel);
        }
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

    async fn leave(&mut self, channel: &str) {
        self.attach.remove(channel);
        self.waits.end_grace(channel);
        self.conn.forget_channel(channel);
        let ns = Arc::clone(&self.ns);
        let _presence_guard = match ns.presence_user_of(channel, &self.conn.socket_id) {
            Some(user) => Some(ns.presence_guard(channel, &user).await),
            None => None,
        };
        let Some(left) = self.ns.unsubscribe(channel, &self.conn.socket_id) else {
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
        if frame.event.len() > MAX_EVENT_NAME_LEN {
            return self.error("Event name is longer than 200 characters", None);
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
