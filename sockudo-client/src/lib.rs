//! # sockudo-client
//!
//! A native Rust realtime client for Sockudo and any Pusher protocol 7 server, shaped like
//! async-nats: a cheap `Clone` handle ([`Client`]) sends commands to one connection task;
//! the connection state lives on a `tokio::sync::watch`; connection events come on a
//! `broadcast`; each subscription is a `Stream` of [`ChannelEvent`]s.
//!
//! What it does: ws and wss (rustls, OS trust store or your own config), protocol 7 or
//! Sockudo V2, activity-timeout negotiation with ping/pong and dead-connection detection;
//! public, private, presence (members, `me`, joins and leaves), private-encrypted (NaCl
//! secretbox, as pusher-js) and cache channels; authorization through your async
//! [`Authorizer`] or an [`HttpAuthorizer`]; user signin and user events; client events whose
//! refusal comes back as an error; reconnect by close code (4000–4099 never, 4100–4199 after
//! backoff, 4200–4299 at once) with jittered exponential [`Backoff`], resubscribing every
//! channel. With V2 it keeps each channel's position, checks every frame's serial against
//! it, resumes after a reconnect and whenever a live gap opens, and fails closed (below).
//!
//! # Guarantees (V2)
//! What a [`Subscription`] yields for a channel:
//! - **In order.** Per `stream_id`, message serials strictly increase. A frame that arrives
//!   ahead of a missing serial is held (bounded: [`ClientOptions::gap_buffer`]) while the
//!   client sends `sockudo:resume` for that channel; the replay (or the late frame) fills
//!   the gap and the held frames follow in serial order.
//! - **No duplicates.** A frame at or behind the channel's position, or whose `message_id`
//!   is in the bounded per-channel window, is dropped and counted
//!   ([`Stats::duplicates_dropped`]).
//! - **Never a silent gap.** Wherever continuity cannot be proven — the server cannot
//!   replay (`resume_failed`, answered or unasked), no answer within
//!   [`ClientOptions::resume_timeout`], the hold bound is exceeded, the stream was reset
//!   (another `stream_id`), the reconnect resume failed, or this subscription's own buffer
//!   overflowed (`client_lagged`) — a [`ChannelEvent::RecoveryFailed`] is yielded exactly
//!   there: after the last event before the hole and before any event after it. Then the
//!   channel continues live; [`Client::history`] can backfill. (`client_lagged` applies to
//!   protocol 7 subscriptions too; [`UserEvents`] only counts its drops.)
//!
//! This relies on the server numbering each channel's messages without holes as this
//! connection sees them and answering a `sockudo:resume` for a channel at any time. A
//! message the server withholds from this connection (its own client events, a publish
//! excluding its `socket_id`) still takes a serial; the server says so with
//! `sockudo_internal:position`, which the client takes as that serial used (in order with
//! the channel's frames, like a delivered message) and never yields. So its own events are
//! neither a gap nor echoed back by a replay that contains them.
//!
//! After a reconnect the client sends its subscribes and, right behind them, one
//! `sockudo:resume` with every channel position (a channel that needs authorization sends
//! its subscribe once authorized: the server keeps its position until then, and the wait for
//! its verdict starts with that subscribe); each channel gets its own verdict. A proven
//! resume yields
//! [`ChannelEvent::Recovered`] followed by the missed events. [`Client::stats`] counts
//! duplicates, gaps detected and filled, recovery failures and lagging subscriptions, and
//! [`Client::events`] carries every continuity `RecoveryFailed` too.
//!
//! # Layout
//! - [`client`] — [`Client`], the handle.
//! - [`options`] — [`ClientOptions`], the builder.
//! - `connection`, `handlers`, `channels`, `command` — the connection task (private).
//! - [`state`] — [`ConnectionState`].
//! - [`event`] — [`ChannelEvent`], [`ClientEvent`], [`Message`], [`Member`].
//! - [`subscription`] — [`Subscription`] and [`UserEvents`] streams.
//! - [`auth`] — [`Authorizer`], [`authorizer_fn`], [`HttpAuthorizer`].
//! - [`presence`], [`encrypted`] — presence bookkeeping and secretbox decryption.
//! - [`backoff`] — [`Backoff`], [`ExponentialBackoff`] and the close-code policy.
//! - [`continuity`] — the per-channel gap state machine (in order, duplicate, gap, resume
//!   verdicts, stream reset) — pure logic, unit- and property-tested.
//! - `recovery` — the connection task carrying out its decisions (private).
//! - [`positions`], [`resume`], [`dedup`], [`history`] — V2 positions, the resume frames
//!   and answers, duplicate suppression and backfill — pure logic, unit-tested.
//! - [`error`] — [`Error`] with a stable [`ErrorKind`].
//!
//! Wire types (frames, event names, channel classification, user ids) are sockudo-core's.
//!
//! # Example
//! ```no_run
//! use futures_util::StreamExt;
//! use sockudo_client::{authorizer_fn, ChannelAuth, ChannelEvent, Client, ClientOptions};
//!
//! # async fn run() -> Result<(), sockudo_client::Error> {
//! let opts = ClientOptions::new("app-key")
//!     .url("ws://127.0.0.1:6001")?
//!     .authorizer(authorizer_fn(|req| async move {
//!         // Ask your backend to sign `req.socket_id` + `req.channel_name`.
//!         Ok(ChannelAuth::new(format!("app-key:signature-for-{}", req.channel_name)))
//!     }));
//! let client = Client::connect(opts).await?;
//! let mut orders = client.subscribe("orders").await?;
//! while let Some(event) = orders.next().await {
//!     match event {
//!         ChannelEvent::Message(m) => println!("{} {}", m.event, m.data),
//!         ChannelEvent::RecoveryFailed(f) => eprintln!("gap on {}: {}", f.channel, f.code),
//!         other => println!("{other:?}"),
//!     }
//! }
//! client.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod backoff;
mod channels;
pub mod client;
mod command;
mod connection;
pub mod continuity;
pub mod dedup;
pub mod encrypted;
pub mod error;
pub mod event;
mod frames;
mod handlers;
pub mod history;
pub mod options;
pub mod positions;
pub mod presence;
mod recovery;
pub mod recovery_code;
pub mod resume;
pub mod state;
pub mod stats;
pub mod subscription;

pub use auth::{
    authorizer_fn, Authorizer, ChannelAuth, ChannelAuthRequest, FnAuthorizer, HttpAuthorizer,
    UserAuth,
};
pub use backoff::{Backoff, ConstantBackoff, ExponentialBackoff};
pub use client::Client;
pub use command::SignedIn;
pub use continuity::GapLimits;
pub use error::{Error, ErrorKind, Result};
pub use event::{ChannelEvent, ClientEvent, Member, Message, RecoveryFailure};
pub use history::{HistoryPage, HistoryQuery};
pub use options::{ClientOptions, Protocol};
pub use positions::Position;
pub use recovery_code::{RecoveryCode, RecoverySource};
pub use state::ConnectionState;
pub use stats::{live_connection_tasks, Stats};
pub use subscription::{Subscription, UserEvents};
