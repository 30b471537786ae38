//! `pusher:subscribe` / `sockudo:subscribe`: auth per channel kind, presence join and
//! snapshot, V2 stream position, and the start of a parked or expected resume.

use std::sync::Arc;

use serde_json::value::RawValue;
use sockudo_core::adapter::{MemberChange, MemberEvent, PresenceJoin};
use sockudo_core::auth::verify_channel_auth;
use sockudo_core::channel::{ChannelKind, ChannelName};
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::frame::{PresenceChannelData, SubscribeData};
use sockudo_core::protocol::{OutboundFrame, ProtocolVersion};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::super::v2;
use super::{presence_data, presence_view_cap, Session, MAX_USER_ID_LEN};
use crate::connection::AfterJoin;
use crate::presence_view::PresenceView;
use crate::publish::{cache_channel_key, decode_cached};

impl Session {
    pub(super) async fn subscribe(&mut self, d: SubscribeData) {
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
        let max = self.node.settings.max_subscriptions_per_connection;
        if self.channels.len() >= max && !self.channels.contains(name.as_str()) {
            metrics::counter!(crate::metrics::LIMIT_REJECTIONS, "limit" => "subscriptions_per_connection")
                .increment(1);
            return self.subscription_error(
                name.as_str(),
                "LimitReached",
                &format!("This connection is subscribed to {max} channels, the most allowed"),
                429,
            );
        }
        if !self.channels.contains(name.as_str())
            && !self.subscribes.take(tokio::time::Instant::now())
        {
            metrics::counter!(crate::metrics::LIMIT_REJECTIONS, "limit" => "subscribe_rate")
                .increment(1);
            let rate = self.node.settings.subscribe_rate_per_second;
            return self.subscription_error(
                name.as_str(),
                "LimitReached",
                &format!("Subscribing faster than {rate} new channels per second; retry later"),
                429,
            );
        }
        let app = self.current_app().await;
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
        if joined.new_subscription {
            // Interest routing: this node must receive the channel from the other nodes
            // before anything below reads positions or acknowledges the subscription.
            if let Err(e) = self.node.adapter.watch_channel(&app.id, &channel).await {
                tracing::warn!(error = %e, channel = %channel, "cannot route the channel to this node");
                self.unsubscribe_local(&channel);
                self.conn.cancel_join(&channel);
                return self.subscription_error(
                    &channel,
                    "ServiceUnavailable",
                    "The cluster transport is temporarily unavailable",
                    503,
                );
            }
        }
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
                        self.unsubscribe_local(&channel);
                        self.conn.cancel_join(&channel);
                        let msg = format!(
                            "Presence channel is full ({} members)",
                            app.max_presence_members
                        );
                        return self.subscription_error(&channel, "LimitReached", &msg, 403);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel = %channel, "presence store unavailable");
                        let left = self.unsubscribe_local(&channel);
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
                // From here on a serial that never arrives is a gap the node repairs, and one
                // at or below the head is already in what this subscriber starts from.
                self.ns.sequence_from(&channel, &position.0, position.1);
                self.conn.set_floor(&channel, &position.0, position.1);
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
}
