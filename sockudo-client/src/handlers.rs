//! The connection task's reaction to server frames and authorizer results.

use serde::Deserialize;
use serde_json::Value;
use sockudo_core::channel::ChannelKind;
use sockudo_core::protocol::events::{self, classify, EventKind};
use sockudo_core::protocol::frame::{PresenceChannelData, SigninUserData};

use crate::channels::Status;
use crate::command::SignedIn;
use crate::connection::{AuthDone, PendingPing, Task};
use crate::encrypted::SharedSecret;
use crate::error::{Error, ErrorKind};
use crate::event::{ChannelEvent, ClientEvent, Member, Message};
use crate::frames::{self, Incoming};
use crate::history::{HistoryPage, CHANNEL_HISTORY};
use crate::positions::Position;
use crate::resume::{self, RESUME_FAILED, RESUME_SUCCESS};
use crate::stats::StatsCell;

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<u16>,
}

#[derive(Deserialize)]
struct SubscriptionErrorData {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    status: Option<u16>,
}

impl Task {
    pub(crate) fn handle_text(&mut self, text: &str) {
        let incoming = match frames::parse(text) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an unparsable frame");
                return;
            }
        };
        let event = incoming.frame.event.clone();
        match classify(&event) {
            EventKind::System(_, name) => self.on_system(name, incoming),
            EventKind::Internal(_, name) => self.on_internal(name, incoming),
            EventKind::Client | EventKind::Other => self.on_message(incoming),
        }
    }

    fn on_system(&mut self, name: &str, incoming: Incoming) {
        match name {
            events::PING => self.outbox.push(frames::pong(self.family)),
            events::PONG => {
                if let Some(PendingPing::Barrier(Some(reply))) = self.pings.pop_front() {
                    let _ = reply.send(Ok(()));
                }
            }
            events::ERROR => self.on_error(incoming.system_data()),
            events::SUBSCRIPTION_ERROR => {
                let Some(channel) = incoming.frame.channel.clone() else {
                    return;
                };
                let d: SubscriptionErrorData = serde_json::from_value(incoming.system_data())
                    .unwrap_or(SubscriptionErrorData {
                        kind: None,
                        error: None,
                        status: None,
                    });
                let message = format!(
                    "subscription to {channel} refused: {}: {}",
                    d.kind.as_deref().unwrap_or("Error"),
                    d.error.as_deref().unwrap_or("no reason given")
                );
                self.fail_subscription(
                    &channel,
                    Error::new(ErrorKind::Auth, message).with_code(d.status),
                );
            }
            events::CACHE_MISS => {
                if let Some(channel) = incoming.frame.channel.as_deref() {
                    self.deliver(channel, ChannelEvent::CacheMiss);
                }
            }
            events::SIGNIN_SUCCESS => self.on_signin_success(incoming.system_data()),
            RESUME_SUCCESS => self.on_resume_success(incoming.system_data()),
            RESUME_FAILED => {
                if let Some(failure) = resume::parse_failure(
                    incoming.frame.channel.as_deref(),
                    &incoming.system_data(),
                ) {
                    self.on_resume_failed(failure);
                }
            }
            CHANNEL_HISTORY => {
                let channel = incoming.frame.channel.clone().or_else(|| {
                    incoming
                        .system_data()
                        .get("channel")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                let Some(channel) = channel else { return };
                let Some(reply) = self
                    .history_waiters
                    .get_mut(&channel)
                    .and_then(|q| q.pop_front())
                else {
                    return;
                };
                let page =
                    serde_json::from_value::<HistoryPage>(incoming.system_data()).map_err(|e| {
                        Error::new(
                            ErrorKind::Protocol,
                            format!("invalid channel_history answer: {e}"),
                        )
                    });
                let _ = reply.send(page);
            }
            _ => {}
        }
    }

    /// `pusher:error`: connection-level codes are remembered for the close policy; others
    /// answer the oldest client event still waiting for its barrier pong.
    fn on_error(&mut self, data: Value) {
        let d: ErrorData = serde_json::from_value(data).unwrap_or(ErrorData {
            message: None,
            code: None,
        });
        let message = d.message.unwrap_or_else(|| "unknown server error".into());
        if let Some(code @ 4000..=4299) = d.code {
            self.last_error_code = Some(code);
        } else {
            let claimed = self.pings.iter_mut().find_map(|p| match p {
                PendingPing::Barrier(reply @ Some(_)) => reply.take(),
                _ => None,
            });
            if let Some(reply) = claimed {
                let kind = if d.code == Some(4301) {
                    ErrorKind::RateLimited
                } else {
                    ErrorKind::Server
                };
                let _ = reply.send(Err(Error::new(kind, message).with_code(d.code)));
                return;
            }
        }
        let _ = self.events_tx.send(ClientEvent::ServerError {
            message,
            code: d.code,
        });
    }

    fn on_internal(&mut self, name: &str, incoming: Incoming) {
        let Some(channel) = incoming.frame.channel.clone() else {
            return;
        };
        match name {
            events::SUBSCRIPTION_SUCCEEDED => self.on_subscribed(&channel, &incoming),
            events::POSITION => {
                // A serial used by a message withheld from this connection; without a
                // position (or on V1, which has none) there is nothing to account for.
                if let (true, Some(stream_id), Some(serial)) = (
                    self.is_v2(),
                    incoming.meta.stream_id.clone(),
                    incoming.meta.serial,
                ) {
                    self.on_withheld(&channel, Position::new(stream_id, serial));
                }
            }
            events::MEMBER_ADDED => {
                let Ok(d) = incoming.frame.system_data::<PresenceChannelData>() else {
                    return;
                };
                let info = d
                    .user_info
                    .as_deref()
                    .and_then(|i| serde_json::from_str(i.get()).ok())
                    .unwrap_or(Value::Null);
                let member = Member {
                    user_id: d.user_id.0,
                    info,
                };
                let Some(presence) = self.channels.get(&channel).and_then(|e| e.presence.clone())
                else {
                    return;
                };
                presence.lock().add(&member);
                self.deliver(&channel, ChannelEvent::MemberAdded(member));
            }
            events::MEMBER_REMOVED => {
                let Ok(d) = incoming.frame.system_data::<PresenceChannelData>() else {
                    return;
                };
                let Some(presence) = self.channels.get(&channel).and_then(|e| e.presence.clone())
                else {
                    return;
                };
                let removed = presence.lock().remove(&d.user_id.0);
                let member = removed.unwrap_or(Member {
                    user_id: d.user_id.0,
                    info: Value::Null,
                });
                self.deliver(&channel, ChannelEvent::MemberRemoved(member));
            }
            _ => {}
        }
    }

    fn on_subscribed(&mut self, channel: &str, incoming: &Incoming) {
        let data = incoming.system_data();
        let v2 = self.is_v2();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        if entry.status == Status::Subscribed {
            return;
        }
        entry.status = Status::Subscribed;
        if let Some(presence) = &entry.presence {
            presence.lock().reset_from(&data, entry.me.clone());
        }
        let stream_id = incoming.meta.stream_id.clone().or_else(|| {
            data.get("stream_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let serial = incoming
            .meta
            .serial
            .or_else(|| data.get("serial").and_then(Value::as_u64));
        for w in entry.waiters.drain(..) {
            let _ = w.send(Ok(entry.presence.clone()));
        }
        let again = entry.subscribed_once && !entry.resumed;
        entry.subscribed_once = true;
        if let (true, Some(stream_id), Some(serial)) = (v2, stream_id, serial) {
            self.on_head(channel, Position::new(stream_id, serial));
        }
        if again {
            self.deliver(channel, ChannelEvent::Resubscribed);
        }
    }

    fn on_message(&mut self, incoming: Incoming) {
        let Some(channel) = incoming.frame.channel.clone() else {
            return;
        };
        let now = std::time::Instant::now();
        let v2 = self.is_v2();
        let stats = &self.stats;
        let Some(entry) = self.channels.get_mut(&channel) else {
            return;
        };
        // Checked now, recorded when delivered: see `DedupWindow::is_duplicate`.
        if let Some(id) = incoming.meta.message_id.as_deref() {
            if entry.dedup.is_duplicate(id, now) {
                stats.duplicate(&channel);
                return;
            }
        }
        let message = incoming.into_message(channel.clone());
        if entry.kind == ChannelKind::ServerToUser {
            if let Some(id) = message.message_id.as_deref() {
                entry.dedup.admit(id, now);
            }
            StatsCell::bump(&stats.messages_delivered);
            self.user_listeners.retain(|tx| !tx.is_closed());
            for tx in &self.user_listeners {
                if tx.try_send(message.clone()).is_err() {
                    StatsCell::bump(&stats.slow_consumer_drops);
                }
            }
            return;
        }
        if v2 {
            self.on_stream_message(&channel, message, now);
        } else {
            self.present(&channel, message, now);
        }
    }

    /// A message is due to the application: record its id (a copy that was held meanwhile
    /// is dropped here), decrypt it, deliver it.
    pub(crate) fn present(&mut self, channel: &str, mut message: Message, now: std::time::Instant) {
        let stats = &self.stats;
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        if let Some(id) = message.message_id.as_deref() {
            if !entry.dedup.admit(id, now) {
                stats.duplicate(channel);
                return;
            }
        }
        if entry.kind == ChannelKind::PrivateEncrypted {
            let decrypted = match &entry.secret {
                Some(secret) => secret.decrypt(&message.data),
                None => Err(Error::new(
                    ErrorKind::Decryption,
                    "no shared secret for this channel",
                )),
            };
            match decrypted {
                Ok(plain) => message.data = plain,
                Err(error) => {
                    StatsCell::bump(&stats.decryption_failures);
                    let event = message.event;
                    self.deliver(channel, ChannelEvent::DecryptionFailed { event, error });
                    return;
                }
            }
        }
        self.deliver(channel, ChannelEvent::Message(message));
    }

    /// Fan `event` out to the channel's listeners, with counters and slow-consumer reports;
    /// a channel nobody listens to any more is unsubscribed.
    pub(crate) fn deliver(&mut self, channel: &str, event: ChannelEvent) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // Counted before the hand-off so a reader that got the event sees it counted.
        if matches!(event, ChannelEvent::Message(_)) && !entry.listeners.is_empty() {
            StatsCell::bump(&self.stats.messages_delivered);
        }
        let out = entry.fanout(channel, &event);
        StatsCell::add(&self.stats.subscriptions_lagged, out.lagged as u64);
        for _ in 0..out.slow {
            StatsCell::bump(&self.stats.slow_consumer_drops);
            let _ = self.events_tx.send(ClientEvent::SlowConsumer {
                channel: channel.to_owned(),
            });
        }
        if entry.abandoned() && entry.kind != ChannelKind::ServerToUser {
            self.remove_channel(channel);
        }
    }

    fn on_signin_success(&mut self, data: Value) {
        let Some(user_data) = data
            .get("user_data")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        let Ok(user) = serde_json::from_str::<SigninUserData>(&user_data) else {
            tracing::warn!("signin_success with user_data lacking an id");
            return;
        };
        self.user.in_flight = false;
        let signed = SignedIn {
            user_id: user.id.0,
            user_data,
        };
        self.user.signed_in = Some(signed.clone());
        for w in self.user.waiters.drain(..) {
            let _ = w.send(Ok(signed.clone()));
        }
        let _ = self.events_tx.send(ClientEvent::SignedIn {
            user_id: signed.user_id.clone(),
        });
        let channel = format!(
            "{}{}",
            sockudo_core::channel::SERVER_TO_USER_PREFIX,
            signed.user_id
        );
        self.channels
            .retain(|name, e| e.kind != ChannelKind::ServerToUser || *name == channel);
        if !self.channels.contains_key(&channel) {
            let entry = crate::channels::ChannelEntry::new(
                &channel,
                ChannelKind::ServerToUser,
                self.opts.dedup,
                self.hold_budget.clone(),
                self.opts.resume_timeout,
            );
            self.channels.insert(channel.clone(), entry);
        }
        self.start_subscribe(&channel);
    }

    pub(crate) fn on_auth(&mut self, done: AuthDone) {
        match done {
            AuthDone::Channel {
                epoch,
                channel,
                result,
            } => {
                if epoch != self.epoch || self.socket_id.is_none() {
                    return;
                }
                let Some(entry) = self.channels.get_mut(&channel) else {
                    return;
                };
                if entry.status != Status::Authorizing {
                    return;
                }
                let auth = match result {
                    Ok(auth) => auth,
                    Err(e) => {
                        let e = if e.kind() == ErrorKind::Auth {
                            e
                        } else {
                            Error::new(
                                ErrorKind::Auth,
                                format!("authorizing {channel} failed: {e}"),
                            )
                            .with_code(e.code())
                        };
                        return self.fail_subscription(&channel, e);
                    }
                };
                if entry.kind == ChannelKind::PrivateEncrypted {
                    match auth.shared_secret.as_deref().map(SharedSecret::from_base64) {
                        Some(Ok(secret)) => entry.secret = Some(secret),
                        Some(Err(e)) => {
                            return self.fail_subscription(
                                &channel,
                                Error::new(
                                    ErrorKind::Auth,
                                    format!("bad shared_secret for {channel}: {e}"),
                                ),
                            )
                        }
                        None => {
                            return self.fail_subscription(
                                &channel,
                                Error::new(
                                    ErrorKind::Auth,
                                    format!("the authorizer gave no shared_secret for {channel}"),
                                ),
                            )
                        }
                    }
                }
                if entry.kind == ChannelKind::Presence {
                    let me = auth
                        .channel_data
                        .as_deref()
                        .and_then(|cd| serde_json::from_str::<PresenceChannelData>(cd).ok());
                    match me {
                        Some(d) => entry.me = Some(d.user_id.0),
                        None => {
                            return self.fail_subscription(
                                &channel,
                                Error::new(
                                    ErrorKind::Auth,
                                    format!(
                                        "the authorizer gave no valid channel_data for {channel}"
                                    ),
                                ),
                            )
                        }
                    }
                }
                entry.status = Status::Subscribing;
                entry.continuity.subscribe_sent(std::time::Instant::now());
                self.outbox.push(frames::subscribe(
                    self.family,
                    &channel,
                    Some(&auth.auth),
                    auth.channel_data.as_deref(),
                ));
            }
            AuthDone::User { epoch, result } => {
                if epoch != self.epoch || self.socket_id.is_none() {
                    return;
                }
                match result {
                    Ok(user) => {
                        self.outbox
                            .push(frames::signin(self.family, &user.auth, &user.user_data))
                    }
                    Err(e) => {
                        self.user.in_flight = false;
                        let e = if e.kind() == ErrorKind::Auth || e.kind() == ErrorKind::Unsupported
                        {
                            e
                        } else {
                            Error::new(ErrorKind::Auth, format!("user authentication failed: {e}"))
                        };
                        for w in self.user.waiters.drain(..) {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}
