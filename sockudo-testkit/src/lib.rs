//! # sockudo-testkit
//!
//! Test infrastructure for Sockudo, in the style of async-nats's test harness: real servers as
//! child processes on random loopback ports, each cleaned up when its value is dropped, with
//! `restart()` for failure scenarios; plus in-process nodes, fault-injecting TCP proxies, a
//! load balancer, and small clients for assertions.
//!
//! # Layout
//! - [`redis`]: [`RedisServer`], a throwaway `redis-server` (no persistence) on a free port.
//! - [`proxy`]: [`TcpProxy`], a TCP proxy whose link can be cut and restored.
//! - [`balancer`]: [`LoadBalancer`], round-robin TCP splicing that skips dead backends.
//! - [`node`]: [`TestNode`], a node in this process on its own runtime and thread (kill =
//!   drop the runtime, drain = the graceful shutdown).
//! - [`process`]: [`ProcessNode`], the real `sockudo` binary configured via docs/configuration.md names.
//! - [`cluster`]: [`Cluster`], N nodes + balancer (+ Redis behind per-node proxies).
//! - `containers` (cargo feature `containers`, on by default): Redis and sockudo nodes as
//!   Docker containers, with images built locally from the host's binaries.
//! - [`client`]: [`TestClient`] (Pusher WebSocket protocol) and [`ApiClient`] (signed HTTP API).
//! - [`chaos`]: [`ChaosScenario`], a reusable chaos run: a process cluster on one Redis, V2
//!   subscribers and V1 presence members through the balancer, idempotent publishes retried
//!   across nodes, random SIGKILLs and restarts; its [`ChaosReport`] counts what was lost,
//!   duplicated or reordered, resume verdicts and presence convergence (see
//!   `docs/testkit-chaos.md`).
//! - [`error`]: [`TestkitError`], the one error type.
//!
//! Every server value must be created inside a tokio runtime: proxies and the balancer spawn
//! their tasks on it. In-process nodes bring their own runtime.
//!
//! # Run with
//! `redis-server` must be on PATH for Redis-backed tests. Process mode runs the `sockudo`
//! binary: it is found in the test's target directory (or `SOCKUDO_BIN`), and built with
//! [`ensure_sockudo_binary`] when there is none, with a line on stderr saying so:
//!
//! ```text
//! cargo test -p sockudo-testkit
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//! use sockudo_testkit::{Cluster, TestClient};
//!
//! # async fn example() -> Result<(), sockudo_testkit::TestkitError> {
//! let mut cluster = Cluster::builder().nodes(2).redis(true).build().await?;
//! let mut client = TestClient::connect(&cluster.ws_url(0)).await?;
//! client.subscribe("orders").await?;
//! let (status, _) = cluster.api(0).trigger("orders", "created", serde_json::json!({"id": 1})).await?;
//! assert_eq!(status, 200);
//! let event = client.recv_event("created", Duration::from_secs(2)).await?;
//! assert_eq!(event.data_json()["id"], 1);
//!
//! cluster.cut_redis(1)?;     // node 1 loses Redis
//! cluster.kill_node(0)?;     // node 0 crashes: its sockets drop without close frames
//! assert_eq!(client.close_code(Duration::from_secs(2)).await?, None);
//! cluster.restart_node(0).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Chaos
//! A whole "kill nodes under load and prove nothing was lost" run is one call; the report
//! prints as a table and [`ChaosReport::assert_clean`] fails on any loss, duplicate, reorder,
//! failed resume or presence ghost:
//!
//! ```no_run
//! use std::time::Duration;
//! use sockudo_testkit::ChaosScenario;
//!
//! # async fn example() -> Result<(), sockudo_testkit::TestkitError> {
//! let report = ChaosScenario::builder()
//!     .kills(20)
//!     .kill_interval(Duration::from_secs(3))
//!     .build()?
//!     .run()
//!     .await?;
//! report.assert_clean();
//! # Ok(())
//! # }
//! ```

pub mod balancer;
pub mod chaos;
pub mod client;
pub mod cluster;
#[cfg(feature = "containers")]
pub mod containers;
pub mod error;
pub mod kafka;
pub mod nats;
pub mod node;
pub mod process;
pub mod proxy;
pub mod pubsub;
pub mod pulsar;
pub mod rabbitmq;
pub mod redis;
pub mod redis_cluster;
pub mod sql;
mod util;

use std::net::SocketAddr;

use sockudo_core::app::App;
use sockudo_server::config::NodeSettings;

pub use balancer::{LoadBalancer, ProbeRecord};
pub use chaos::{ChaosReport, ChaosScenario};
pub use client::{ApiClient, CloseOutcome, Event, TestClient};
pub use cluster::{Cluster, ClusterBuilder, ClusterNode, NodeMode};
#[cfg(feature = "containers")]
pub use containers::{
    ContainerImages, ContainerNetwork, ContainerNode, ContainerOptions, DockerEngine,
    RedisContainer,
};
pub use error::TestkitError;
pub use kafka::KafkaBroker;
pub use nats::NatsCluster;
pub use node::TestNode;
pub use process::{ensure_sockudo_binary, settings_env, sockudo_binary, ProcessNode};
pub use proxy::TcpProxy;
pub use pubsub::PubSubEmulator;
pub use pulsar::PulsarBroker;
pub use rabbitmq::RabbitMq;
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;

/// The test app's id (the binary's dev-app default).
pub const APP_ID: &str = "app-id";
/// The test app's key.
pub const APP_KEY: &str = "app-key";
/// The test app's secret.
pub const APP_SECRET: &str = "app-secret";

/// The test app: the dev-app credentials, client events on.
pub fn test_app() -> App {
    let mut app = App::new(APP_ID, APP_KEY, APP_SECRET);
    app.enable_client_messages = true;
    app
}

/// Settings for a test node: loopback, port 0, no drain grace, no metrics listener, `apps`.
pub fn test_settings(apps: Vec<App>) -> NodeSettings {
    NodeSettings {
        host: "127.0.0.1".into(),
        port: 0,
        shutdown_grace_period: 0,
        metrics_port: 0,
        apps,
        ..NodeSettings::default()
    }
}

/// `ws://{addr}/app/{key}?protocol=7&client=sockudo-testkit&version=…`.
pub fn ws_url(addr: SocketAddr, key: &str) -> String {
    format!(
        "ws://{addr}/app/{key}?protocol=7&client=sockudo-testkit&version={}",
        env!("CARGO_PKG_VERSION")
    )
}
