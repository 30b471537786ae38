//! # sockudo-server
//!
//! A Sockudo node: the Pusher-compatible WebSocket endpoint, the Pusher HTTP API and the
//! operational endpoints, as a library (mount [`router`] in your own axum app or call
//! [`serve`]) and as the thin `sockudo` binary.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! // Apps come from the config file, SOCKUDO_DEFAULT_APP_ID/_KEY/_SECRET or a database;
//! // with none, `load` fails with `ConfigError::NoApps` (the library never invents one).
//! let env: std::collections::HashMap<String, String> = std::env::vars().collect();
//! let settings = sockudo_server::config::NodeSettings::load(&Default::default(), &env)
//!     .map_err(std::io::Error::other)?;
//! let node = sockudo_server::build_node(settings).await.map_err(std::io::Error::other)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6001").await?;
//! sockudo_server::serve(listener, node, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Embedding checklist
//!
//! Running the node's [`router`] (or [`server::router_with`] under a prefix) on your own axum
//! server instead of [`serve`], you take over what `serve` does:
//!
//! 1. **Tracing**: the library logs through `tracing` and installs no subscriber; install
//!    yours (the binary uses `tracing_subscriber::fmt` with `RUST_LOG`).
//! 2. **Node**: [`NodeSettings::load`](config::NodeSettings::load) (or `NodeSettings::default()`
//!    with your `apps`), then [`build_node`] or a [`NodeBuilder`] with your own backends.
//! 3. **Metrics** (optional): [`metrics::install`] puts the process-wide Prometheus recorder
//!    in place and returns its handle; serve it with [`metrics::serve_metrics`] (or render
//!    it in your own route), and start [`metrics::spawn_sampler`] so gauges kept as atomics
//!    are copied in. Without a recorder every metric is a no-op.
//! 4. **Readiness**: call [`Node::mark_serving`] once your listener accepts; until then
//!    `GET …/ready` answers 503 `starting` and load balancers keep traffic away.
//! 5. **Shutdown**: on your shutdown signal run [`drain`] before stopping the server: the
//!    node turns unready, refuses upgrades, closes sockets with 4200 after
//!    `shutdown_grace_period` and flushes buffered webhooks.
//! 6. **Client IP**: the per-IP upgrade limit needs a `PeerAddr` extension (or trusted
//!    `X-Forwarded-For` hops); [`serve`] adds it, your server must too if you enable the limit.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sockudo_core::app::App;
//! use sockudo_server::config::NodeSettings;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. tracing_subscriber::fmt().init(); (your choice of subscriber)
//! let mut settings = NodeSettings::default();
//! settings.apps = vec![App::new("my-app", "my-key", "my-secret")];
//! let node = sockudo_server::NodeBuilder::new(settings).build().await?; // 2.
//! if let Some(handle) = sockudo_server::metrics::install(&node.settings.node_id) { // 3.
//!     sockudo_server::metrics::spawn_sampler(&node, Some(handle.clone()));
//!     let metrics = tokio::net::TcpListener::bind("127.0.0.1:9601").await?;
//!     tokio::spawn(sockudo_server::metrics::serve_metrics(metrics, handle, std::future::pending()));
//! }
//! let app = sockudo_server::mount(axum::Router::new(), "/realtime", Arc::clone(&node));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! node.mark_serving(); // 4.
//! let drain_node = Arc::clone(&node);
//! axum::serve(listener, app.into_make_service())
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         sockudo_server::drain(&drain_node).await; // 5.
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Publish from your handlers with [`Node::publish`] ([`send`]); answer your clients' auth
//! requests with `sockudo_core::auth::{private_channel_auth, presence_channel_auth, user_auth}`.
//!
//! # Layout
//! - [`config`]: operator settings (TOML < env < CLI) and their validation.
//! - [`node`]: the node's shared state and its local fanout sink.
//! - [`namespace`]: one app's channels, presence members and users on this node.
//! - [`connection`]: a connection's handle and its bounded outbound queue.
//! - [`hot`]: the V2 hot tier (recent messages per channel); [`dedup`]: duplicate suppression.
//! - [`publish`]: the one publish path shared by the API and client events; [`send`]:
//!   [`Node::publish`], the same path for your own code.
//! - [`builder`]: [`NodeBuilder`], a node on backends of your choice.
//! - `push` (feature `push`): push notifications: registrations, subscriptions,
//!   queue-oriented publish, FCM / APNs / Web Push providers.
//! - `memory`: giving reclaimed per-channel memory back to the operating system.
//! - `ws`: the WebSocket upgrade, the per-connection task and the protocol handler.
//! - `http`: the Pusher HTTP API handlers (auth by `sockudo_core::layers`).
//! - [`webhooks`]: webhook batching, signing and queued at-least-once delivery.
//! - [`server`]: router assembly, health/readiness, serve and drain; [`mount`](mod@mount): the node
//!   inside your own axum app under a prefix.
//! - [`metrics`]: every Prometheus metric's name, the recorder and `GET /metrics`.

pub mod admin;
pub mod apps;
pub mod builder;
pub mod config;
// Fanout internals, public for tests and the bench: pub(crate) after the fanout rework (#17).
#[allow(missing_docs)]
pub mod connection;
// Fanout internals, public for tests and the bench: pub(crate) after the fanout rework (#17).
#[allow(missing_docs)]
pub mod dedup;
// Fanout internals, public for tests and the bench: pub(crate) after the fanout rework (#17).
#[allow(missing_docs)]
pub mod hot;
mod http;
pub mod listener;
mod live_gaps;
mod memory;
pub mod metrics;
pub mod mount;
// Fanout internals, public for tests and the bench: pub(crate) after the fanout rework (#17).
#[allow(missing_docs)]
pub mod namespace;
pub mod node;
pub mod presence_view;
pub mod publish;
#[cfg(feature = "push")]
pub mod push;
pub mod send;
// Fanout internals, public for tests and the bench: pub(crate) after the fanout rework (#17).
#[allow(missing_docs)]
pub mod sequencer;
pub mod server;
pub mod webhooks;
mod ws;

pub use builder::NodeBuilder;
pub use http::api_router;
pub use mount::mount;
pub use node::Node;
pub use server::{build_node, build_node_memory, drain, router, serve, BuildError};
