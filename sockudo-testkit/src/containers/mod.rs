//! Containers mode (cargo feature `containers`): Redis and sockudo nodes as Docker containers.
//!
//! - [`DockerEngine`]: a bollard client whose Docker API version is negotiated with the engine
//!   (so Docker 20.10 / API 1.41 works as well as current engines), on its own runtime so
//!   `kill()` and `Drop` can wait for the engine synchronously.
//! - [`ContainerImages`] and [`image`]: images built locally from the host's binaries (no
//!   registry needed), cached by content hash; or named images such as `redis:7-alpine`.
//! - [`RedisContainer`] and [`ContainerNode`]: the container counterparts of
//!   [`RedisServer`](crate::RedisServer) and [`ProcessNode`](crate::ProcessNode). Every
//!   container is force-removed when its value is dropped, panics included.
//!
//! [`Cluster`](crate::Cluster) runs them with `mode(NodeMode::Container)` or
//! [`containers(..)`](crate::ClusterBuilder::containers).
//!
//! # Networking
//! [`ContainerNetwork::Host`] (the default) shares the host's network namespace: nodes listen
//! on distinct loopback ports and reach Redis (through the testkit's per-node
//! [`TcpProxy`](crate::TcpProxy), so `cut_redis` works) on 127.0.0.1. It needs no iptables
//! rules, which matters for engines started with `--iptables=false`, and on Linux engines
//! only. [`ContainerNetwork::Bridge`] gives each container its own network namespace on the
//! default bridge, publishes the node ports on 127.0.0.1, and points the nodes at the Redis
//! container's bridge address (no proxies there, so no `cut_redis`).

mod engine;
pub mod image;
mod node;
mod redis;

pub use engine::{docker_available, DockerEngine, EngineVersion};
pub use image::ContainerImages;
pub use node::ContainerNode;
pub use redis::RedisContainer;

/// How containers are networked; see the [module docs](self#networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerNetwork {
    /// `--network host`: loopback ports shared with the host (Linux engines).
    #[default]
    Host,
    /// The default bridge with ports published on 127.0.0.1.
    Bridge,
}

impl ContainerNetwork {
    pub(crate) fn mode(self) -> &'static str {
        match self {
            ContainerNetwork::Host => "host",
            ContainerNetwork::Bridge => "bridge",
        }
    }
}

/// Options of containers mode for [`ClusterBuilder::containers`](crate::ClusterBuilder::containers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerOptions {
    /// Which images run (default: built locally from the host's binaries).
    pub images: ContainerImages,
    /// How the containers are networked (default: host).
    pub network: ContainerNetwork,
}

/// A name for a new container: `sockudo-testkit-<pid>-<random>-<role>`.
pub(crate) fn container_name(role: &str) -> String {
    format!(
        "sockudo-testkit-{}-{:08x}-{role}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// `K=V` strings for the Docker API.
pub(crate) fn env_strings(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}
