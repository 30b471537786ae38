//! The connection task's record of each channel: listeners, subscribe status, keys,
//! presence, position, dedup window and recovery gate.

use std::sync::Arc;

use parking_lot::Mutex;
use sockudo_core::channel::ChannelKind;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::command::Reply;
use crate::dedup::{DedupConfig, DedupWindow};
use crate::encrypted::SharedSecret;
use crate::event::ChannelEvent;
use crate::positions::ChannelPosition;
use crate::presence::{PresenceState, SharedPresence};
use crate::resume::RecoveryGate;

#[derive(Debug)]
pub(crate) struct Listener {
    pub id: u64,
    pub tx: mpsc::Sender<ChannelEvent>,
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
    pub position: ChannelPosition,
    pub dedup: DedupWindow,
    pub gate: RecoveryGate,
}

/// What a fan-out ran into.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Fanout {
    pub slow: usize,
}

impl ChannelEntry {
    pub fn new(kind: ChannelKind, dedup: DedupConfig) -> Self {
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
            position: ChannelPosition::default(),
            dedup: DedupWindow::new(dedup),
            gate: RecoveryGate::default(),
        }
    }

    /// Hand `event` to every listener without waiting: a full buffer loses the event for
    /// that listener (counted), a closed one is forgotten.
    pub fn fanout(&mut self, event: &ChannelEvent) -> Fanout {
        let mut out = Fanout::default();
        self.listeners
            .retain(|l| match l.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    out.slow += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
        out
    }

    /// No one listens or waits any more: the channel can be unsubscribed.
    pub fn abandoned(&self) -> bool {
        self.listeners.is_empty() && self.waiters.is_empty()
    }
}
