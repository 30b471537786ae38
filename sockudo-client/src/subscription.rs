//! [`Subscription`] (a channel's event stream) and [`UserEvents`] (the signed-in user's).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use crate::command::{Command, CommandSender};
use crate::event::{ChannelEvent, Member, Message};
use crate::presence::SharedPresence;

/// The code of the [`ChannelEvent::RecoveryFailed`] a [`Subscription`] yields when its
/// buffer was full and events were dropped (the consumer did not keep up).
pub const CODE_CLIENT_LAGGED: crate::RecoveryCode = crate::RecoveryCode::ClientLagged;

/// The events of one subscribed channel, as a `Stream`. Dropping the last subscription of a
/// channel unsubscribes it. The stream ends when the channel is unsubscribed or the client
/// closes.
///
/// Events are buffered up to
/// [`subscription_capacity`](crate::ClientOptions::subscription_capacity). A consumer that
/// falls behind loses events, but never silently: the stream yields a
/// [`ChannelEvent::RecoveryFailed`] with code [`CODE_CLIENT_LAGGED`] exactly where events
/// are missing (after those buffered before, before those that follow once it caught up),
/// counted in [`Stats::subscriptions_lagged`](crate::Stats::subscriptions_lagged) and
/// [`Stats::slow_consumer_drops`](crate::Stats::slow_consumer_drops).
#[derive(Debug)]
pub struct Subscription {
    pub(crate) channel: String,
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<ChannelEvent>,
    pub(crate) cmd: CommandSender,
    pub(crate) presence: Option<SharedPresence>,
}

impl Subscription {
    /// The channel this subscription is on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event, or `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }

    /// The next [`ChannelEvent::Message`], skipping other events, `RecoveryFailed` included:
    /// use [`recv`](Self::recv) (or the `Stream`) where gaps matter.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let ChannelEvent::Message(m) = self.rx.recv().await? {
                return Some(m);
            }
        }
    }

    /// Presence channels: the current members (including `me`).
    pub fn members(&self) -> Vec<Member> {
        self.presence
            .as_ref()
            .map(|p| p.lock().members())
            .unwrap_or_default()
    }

    /// Presence channels: this client's member entry.
    pub fn me(&self) -> Option<Member> {
        self.presence.as_ref().and_then(|p| p.lock().me())
    }

    /// Presence channels: the member count.
    pub fn member_count(&self) -> usize {
        self.presence
            .as_ref()
            .map(|p| p.lock().count())
            .unwrap_or(0)
    }

    /// Whether this is a presence subscription.
    pub fn is_presence(&self) -> bool {
        self.presence.is_some()
    }
}

impl Stream for Subscription {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::DropListener {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

/// Events sent to the signed-in user (`#server-to-user-{id}`), as a `Stream`.
#[derive(Debug)]
pub struct UserEvents {
    pub(crate) rx: mpsc::Receiver<Message>,
}

impl UserEvents {
    /// The next event for the signed-in user (`None` once the client is closed).
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Stream for UserEvents {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}
