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
//! # Layout
//! - [`config`]: operator settings (TOML < env < CLI) and their validation.
//! - [`node`]: the node's shared state and its local fanout sink.
//! - [`namespace`]: one app's channels, presence members and users on this node.
//! - [`connection`]: a connection's handle and its bounded outbound queue.
//! - [`hot`]: the V2 hot tier (recent messages per channel); [`dedup`]: duplicate suppression.
//! - `memory`: giving reclaimed per-channel memory back to the operating system.
//! - `ws`: the WebSocket upgrade, the per-connection task and the protocol handler.
//! - `http`: the Pusher HTTP API handlers (auth by `sockudo_core::layers`).
//! - [`publish`]: the one publish path shared by the API and client events.
//! - [`webhooks`]: webhook batching, signing and queued at-least-once delivery.
//! - [`server`]: router assembly, health/readiness, serve and drain.
//! - [`metrics`]: every Prometheus metric's name, the recorder and `GET /metrics`.

pub mod admin;
pub mod apps;
pub mod config;
pub mod connection;
pub mod dedup;
pub mod hot;
mod http;
pub mod listener;
mod live_gaps;
mod memory;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod presence_view;
pub mod publish;
pub mod sequencer;
pub mod server;
pub mod webhooks;
mod ws;

pub use http::api_router;
pub use node::Node;
pub use server::{build_node, build_node_memory, drain, router, serve, BuildError};
