//! What the client hands to the application: channel events, connection events, messages.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::state::ConnectionState;

/// An app event, client event or user event as delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// The `data` as sent by the publisher (a JSON string stays a string). On encrypted
    /// channels: the decrypted plaintext, parsed as JSON when it is JSON.
    pub data: Value,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<String>,
    /// V2: the stable identity of the message (dedup key).
    pub message_id: Option<String>,
    /// V2: position in the channel's stream.
    pub serial: Option<u64>,
    /// V2: the stream generation.
    pub stream_id: Option<String>,
    /// V2: optional extras.
    pub extras: Option<Value>,
}

impl Message {
    /// `data` when it is a string.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_str()
    }

    /// Decode `data` as `T`; a string holding JSON (as the HTTP API delivers) is parsed first.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let decoded = match &self.data {
            Value::String(text) => serde_json::from_str(text),
            other => serde_json::from_value(other.clone()),
        };
        decoded.map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("event data is not the expected JSON: {e}"),
            )
        })
    }
}

/// A presence member.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The member's user id.
    pub user_id: String,
    /// `user_info` from the member's `channel_data` (`Null` when none).
    pub info: Value,
}

/// Why continuity is not proven at some point of a channel's stream: events between the
/// last one delivered before the [`ChannelEvent::RecoveryFailed`] and the first one after it
/// may be missing.
///
/// From the server (`sockudo:resume_failed`, as the answer to a resume or unasked): codes
/// `stream_reset`, `position_expired`, `continuity_unverifiable`, `persistence_unavailable`.
/// Decided by the client itself (no server answer to trust), with only `channel`, `code` and
/// `reason` (and the stream ids for a reset):
/// - `stream_reset` — a frame (or subscription head) from another `stream_id` arrived;
/// - `continuity_unverifiable` — serials were skipped and no resume could fill them (the
///   stream reset meanwhile, or a success that did not replay them);
/// - `resume_timeout` — no answer to a resume within
///   [`resume_timeout`](crate::ClientOptions::resume_timeout);
/// - `gap_overflow` — more frames waited behind a gap than
///   [`gap_buffer`](crate::ClientOptions::gap_buffer) allows;
/// - `client_lagged` — this subscription's buffer was full and events were dropped (V1 too).
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryFailure {
    /// The channel whose continuity is not proven.
    pub channel: String,
    /// Why (see the type docs).
    pub code: crate::RecoveryCode,
    /// A human-readable explanation, when given.
    pub reason: Option<String>,
    /// The stream the client's position belonged to.
    pub expected_stream_id: Option<String>,
    /// The channel's stream now.
    pub current_stream_id: Option<String>,
    /// The oldest serial the server still has, when it said.
    pub oldest_available_serial: Option<u64>,
    /// The newest serial the server has, when it said.
    pub newest_available_serial: Option<u64>,
}

impl RecoveryFailure {
    /// A failure decided by the client itself (no server answer to trust).
    pub fn client_side(channel: &str, code: crate::RecoveryCode, reason: &str) -> Self {
        RecoveryFailure {
            channel: channel.to_owned(),
            code,
            reason: Some(reason.to_owned()),
            expected_stream_id: None,
            current_stream_id: None,
            oldest_available_serial: None,
            newest_available_serial: None,
        }
    }
}

/// Everything a [`Subscription`](crate::Subscription) yields.
///
/// With V2 the messages of a channel come in stream order: per `stream_id` the serials
/// strictly increase, nothing is delivered twice, and wherever a serial is skipped (or the
/// stream changes) a [`RecoveryFailed`](ChannelEvent::RecoveryFailed) comes between the
/// two messages. Never a silent gap.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// An app or client event.
    Message(Message),
    /// A user's first connection joined the presence channel.
    MemberAdded(Member),
    /// A user's last connection left the presence channel.
    MemberRemoved(Member),
    /// Cache channel: nothing was cached when this client subscribed.
    CacheMiss,
    /// Subscribed again after a reconnect, without a resume: events may have been missed.
    Resubscribed,
    /// V2, after a reconnect: the resume proved continuity. The `replayed` missed events
    /// follow, then the live ones, all in stream order.
    Recovered {
        /// Where the replay came from.
        source: crate::RecoverySource,
        /// How many missed events follow.
        replayed: u64,
    },
    /// Continuity is not proven here: events between the message before this and the one
    /// after it may be missing (see [`RecoveryFailure`] for the codes). With V2, delivered
    /// before any later event of the channel; backfill with
    /// [`Client::history`](crate::Client::history). Two never come in a row: one already
    /// covers the point.
    RecoveryFailed(RecoveryFailure),
    /// An encrypted event could not be decrypted (it is not delivered).
    DecryptionFailed {
        /// The event name.
        event: String,
        /// Why decryption failed.
        error: Error,
    },
    /// The channel could not be subscribed again after a reconnect; the stream ends.
    SubscriptionFailed(Error),
}

/// Connection-level events ([`Client::events`](crate::Client::events)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The connection state changed.
    State(ConnectionState),
    /// The server sent `pusher:error` that no pending request claimed.
    ServerError {
        /// The server's message.
        message: String,
        /// The Pusher error code, when given.
        code: Option<u16>,
    },
    /// V2 continuity failed for a channel (also delivered on that channel's stream); not sent
    /// for `client_lagged`, which concerns one subscription (see `SlowConsumer`).
    RecoveryFailed(RecoveryFailure),
    /// A subscription's buffer was full and an event was dropped (that subscription's stream
    /// says where, with a `client_lagged` `RecoveryFailed`).
    SlowConsumer {
        /// The subscription's channel.
        channel: String,
    },
    /// Signin succeeded (also after an automatic re-signin on reconnect).
    SignedIn {
        /// The signed-in user's id.
        user_id: String,
    },
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
            && self.code() == other.code()
            && self.message() == other.message()
    }
}
