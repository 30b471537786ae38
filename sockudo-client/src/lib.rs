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
//! channel. With V2 it keeps each channel's position, sends `sockudo:resume` after a
//! reconnect and fails closed: a [`ChannelEvent::RecoveryFailed`] comes before any new live
//! event of that channel, and [`Client::history`] backfills. A bounded per-channel window of
//! message ids drops redeliveries ([`Client::stats`] counts them).
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
//! - [`positions`], [`resume`], [`dedup`], [`history`] — V2 positions, the resume gate,
//!   duplicate suppression and backfill — pure logic, unit-tested.
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
pub use error::{Error, ErrorKind, Result};
pub use event::{ChannelEvent, ClientEvent, Member, Message, RecoveryFailure};
pub use history::{HistoryPage, HistoryQuery};
pub use options::{ClientOptions, Protocol};
pub use positions::Position;
pub use state::ConnectionState;
pub use stats::{live_connection_tasks, Stats};
pub use subscription::{Subscription, UserEvents};
