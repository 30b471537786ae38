//! The connection task's record of each channel: listeners, subscribe status, keys,
//! presence, dedup window and continuity (position, gaps, resume verdicts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sockudo_core::channel::ChannelKind;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::command::Reply;
use crate::continuity::{Continuity, HoldBudget};
use crate::dedup::{DedupConfig, DedupWindow};
use crate::encrypted::SharedSecret;
use crate::event::{ChannelEvent, RecoveryFailure};
use crate::presence::{PresenceState, SharedPresence};
use crate::subscription::CODE_CLIENT_LAGGED;

#[derive(Debug)]
pub(crate) struct Listener {
    pub id: u64,
    /// Its buffer holds one slot more than the configured capacity: room for the
    /// `client_lagged` marker when events start being dropped.
    pub tx: mpsc::Sender<ChannelEvent>,
    /// The marker is queued and nothing was queued after it: events are being dropped.
    pub lagging: bool,
}

impl Listener {
    pub fn new(id: u64, tx: mpsc::Sender<ChannelEvent>) -> Self {
        Listener {
            id,
            tx,
            lagging: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Nothing sent on the current connection (or no connection).
    Idle,
    /// Waiting for the authorizer.
    Authorizing,
    /// `subscribe` sent, no answer yet.
    Subscribing,
    Subscribed,
}

#[derive(Debug)]
pub(crate) struct ChannelEntry {
    pub kind: ChannelKind,
    pub listeners: Vec<Listener>,
    pub waiters: Vec<Reply<Option<SharedPresence>>>,
    pub status: Status,
    pub subscribed_once: bool,
    pub secret: Option<SharedSecret>,
    pub presence: Option<SharedPresence>,
    pub me: Option<String>,
    pub dedup: DedupWindow,
    pub continuity: Continuity,
    /// A `sockudo:resume` for this channel went out on the current connection, so its
    /// `subscription_succeeded` is not a plain `Resubscribed`.
    pub resumed: bool,
}

/// What a fan-out ran into.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Fanout {
    /// Events a listener lost because its buffer was full.
    pub slow: usize,
    /// `client_lagged` markers queued.
    pub lagged: usize,
}

impl ChannelEntry {
    pub fn new(
        name: &str,
        kind: ChannelKind,
        dedup: DedupConfig,
        budget: HoldBudget,
        resume_timeout: Duration,
    ) -> Self {
        let presence = matches!(kind, ChannelKind::Presence)
            .then(|| Arc::new(Mutex::new(PresenceState::default())));
        ChannelEntry {
            kind,
            listeners: Vec::new(),
            waiters: Vec::new(),
            status: Status::Idle,
            subscribed_once: false,
            secret: None,
            presence,
            me: None,
            dedup: DedupWindow::new(dedup),
            continuity: Continuity::new(name, budget, resume_timeout),
            resumed: false,
        }
    }

    /// Hand `event` to every listener without waiting; a closed one is forgotten. A listener
    /// whose buffer is full loses events, but never silently: the last slot of its buffer is
    /// kept for a `RecoveryFailed` with code `client_lagged`, queued when the first event is
    /// lost. It sits after everything queued before and before anything queued once the
    /// consumer caught up, exactly where the events are missing.
    pub fn fanout(&mut self, channel: &str, event: &ChannelEvent) -> Fanout {
        let mut out = Fanout::default();
        self.listeners.retain_mut(|l| {
            if l.tx.is_closed() {
                return false;
            }
            let room = l.tx.capacity();
            if room >= 2 {
                l.lagging = false;
                return match l.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        out.slow += 1;
                        true
                    }
                    Err(TrySendError::Closed(_)) => false,
                };
            }
            out.slow += 1;
            if room == 1 && !l.lagging {
                l.lagging = true;
                out.lagged += 1;
                let _ = l.tx.try_send(lagged(channel));
            }
            true
        });
        out
    }

    /// When the channel's pending gap or resume verdict gives up. None while its subscribe
    /// has not gone out on this connection (an authorizer is still busy): the server keeps
    /// a resume position until the subscribe and cannot answer before it, so that wait does
    /// not count ([`Continuity::subscribe_sent`] starts it).
    pub fn deadline(&self) -> Option<Instant> {
        match self.status {
            Status::Subscribing | Status::Subscribed => self.continuity.deadline(),
            Status::Idle | Status::Authorizing => None,
        }
    }

    /// No one listens or waits any more: the channel can be unsubscribed.
    pub fn abandoned(&self) -> bool {
        self.listeners.is_empty() && self.waiters.is_empty()
    }
}

/// The marker a lagging subscription gets where its dropped events were.
fn lagged(channel: &str) -> ChannelEvent {
    ChannelEvent::RecoveryFailed(RecoveryFailure::client_side(
        channel,
        CODE_CLIENT_LAGGED,
        "the subscription's buffer was full: events were dropped here until the consumer \
         caught up",
    ))
}
