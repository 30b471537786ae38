//! Messages from the handles to the connection task.

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::event::{ChannelEvent, Message};
use crate::history::{HistoryPage, HistoryQuery};
use crate::presence::SharedPresence;

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The `id` of the signed-in user.
    pub user_id: String,
    /// The `user_data` JSON string the server accepted.
    pub user_data: String,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        channel: String,
        id: u64,
        tx: mpsc::Sender<ChannelEvent>,
        reply: Reply<Option<SharedPresence>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<()>,
    },
    DropListener {
        channel: String,
        id: u64,
    },
    Trigger {
        channel: String,
        event: String,
        data: Box<RawValue>,
        reply: Reply<()>,
    },
    Signin {
        reply: Reply<SignedIn>,
    },
    UserListener {
        tx: mpsc::Sender<Message>,
    },
    History {
        channel: String,
        query: HistoryQuery,
        reply: Reply<HistoryPage>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

pub(crate) type CommandSender = mpsc::UnboundedSender<Command>;
