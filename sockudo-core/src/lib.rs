//! # sockudo-core
//!
//! The transport-agnostic heart of Sockudo: the Pusher protocol 7 wire types (and our V2
//! extensions), channel naming rules, every signature the protocol uses, the app model, and
//! one trait per backend kind with an in-memory implementation as the embedded default.
//!
//! The core never depends on a node, a client, axum, or a concrete backend outside its cargo
//! feature, so Rust services can mount its pieces in their own stacks.
//!
//! # Layout
//! - [`protocol`]: frames as they travel on the WebSocket, event names, close/error codes.
//! - [`channel`]: channel-name validation and classification.
//! - [`auth`]: channel/presence/signin signatures, HTTP API query signing, webhook signing.
//! - [`app`]: the app model and the [`app::AppManager`] trait (static, config-backed default).
//! - [`cache`]: the shared [`cache::Cache`] contract (TTL, set-if-absent, increment) + memory impl.
//! - [`history`]: V2 serials, stream generations, the [`history::HistoryStore`] contract and
//!   the pure resume decision ([`history::recovery`]).
//! - [`queue`]: the shared work [`queue::Queue`] contract (at-least-once, leases, backoff,
//!   dead letters) + memory impl (Redis impl behind the `redis` feature).
//! - [`adapter`]: the [`adapter::Adapter`] contract for (cross-node) fanout + the local impl.
//! - `redis_conn` (feature `redis`): `redis_conn::RedisEndpoint`, one server or a Redis
//!   Cluster, accepted by every Redis-backed part.
//! - [`layers`]: tower middleware for the HTTP API ([`layers::ApiAuthLayer`]: signed-request
//!   auth; [`layers::RateLimitLayer`]: cluster-wide GCRA rate limits over the cache;
//!   [`layers::IdempotencyLayer`]: one effect per `idempotency_key`) and the shared JSON error
//!   response ([`layers::json_error`]).

pub mod adapter;
pub mod app;
pub mod auth;
pub mod cache;
pub mod channel;
pub mod history;
pub mod layers;
pub mod protocol;
pub mod queue;
#[cfg(feature = "redis")]
pub mod redis_conn;
