//! [`Cluster`]: N nodes behind a [`LoadBalancer`], optionally sharing a [`RedisServer`] that
//! each node reaches through its own [`TcpProxy`] (so one node's link can be cut).
//!
//! With `redis(true)` the nodes share Redis for everything a cluster shares: the adapter
//! (cross-node fanout, presence, cluster queries), the cache and the V2 history store. Node
//! liveness is tuned for tests (heartbeat 200 ms, dead after 2 s); override it through
//! [`ClusterBuilder::settings`].

use std::fmt;
use std::net::SocketAddr;

use sockudo_core::app::App;
use sockudo_server::config::NodeSettings;

use crate::balancer::LoadBalancer;
use crate::client::{ApiClient, TestClient};
#[cfg(feature = "containers")]
use crate::containers::{
    image, ContainerNetwork, ContainerNode, ContainerOptions, DockerEngine, RedisContainer,
};
use crate::kafka::KafkaBroker;
use crate::nats::NatsCluster;
use crate::node::TestNode;
use crate::process::{settings_env, ProcessNode};
use crate::proxy::TcpProxy;
use crate::pubsub::PubSubEmulator;
use crate::pulsar::PulsarBroker;
use crate::rabbitmq::RabbitMq;
use crate::redis::RedisServer;
use crate::redis_cluster::RedisCluster;
use crate::TestkitError;

/// How the cluster's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeMode {
    /// [`TestNode`]s: in this process, each on its own runtime. Fast; `kill` drops the runtime.
    #[default]
    InProcess,
    /// [`ProcessNode`]s: the real `sockudo` binary, configured through the environment.
    Process,
    /// [`ContainerNode`]s: the `sockudo` binary in Docker containers, configured through the
    /// environment, with Redis in a container too (cargo feature `containers`; needs a
    /// reachable Docker Engine). See [`ClusterBuilder::containers`] for images and networking.
    #[cfg(feature = "containers")]
    Container,
}

type SettingsFn = Box<dyn Fn(usize, &mut NodeSettings) + Send + Sync>;
type EnvFn = Box<dyn Fn(usize, &mut Vec<(String, String)>) + Send + Sync>;

/// Configures a [`Cluster`]; see [`Cluster::builder`].
pub struct ClusterBuilder {
    nodes: usize,
    redis: bool,
    /// A Redis the cluster uses but does not own (see [`ClusterBuilder::redis_at`]).
    redis_at: Option<SocketAddr>,
    /// NATS servers for the adapter (0: the adapter runs on Redis).
    nats_servers: usize,
    kafka: bool,
    /// Shared state (and the adapter, unless on NATS) on a Redis Cluster.
    redis_cluster: bool,
    /// The adapter on the Google Pub/Sub emulator.
    google_pubsub: bool,
    /// The adapter on a private RabbitMQ node.
    rabbitmq: bool,
    /// The adapter on a `pulsar-lite` broker ([`ClusterBuilder::pulsar`]).
    pulsar: bool,
    mode: NodeMode,
    app: App,
    settings: Option<SettingsFn>,
    env: Option<EnvFn>,
    #[cfg(feature = "containers")]
    containers: ContainerOptions,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("nodes", &self.nodes)
            .field("redis", &self.redis)
            .field("mode", &self.mode)
            .field("app", &self.app.id)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// Number of nodes (default 2).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Start a Redis and point every node's Redis-backed parts at it (default off).
    pub fn redis(mut self, on: bool) -> Self {
        self.redis = on;
        self
    }

    /// Use the Redis at `addr` (started and owned by the caller) instead of starting one:
    /// several clusters can share it, each under its own `cluster.prefix`
    /// ([`ClusterBuilder::settings`]). Implies `redis(true)`; each node still reaches it
    /// through its own [`TcpProxy`].
    pub fn redis_at(mut self, addr: SocketAddr) -> Self {
        self.redis = true;
        self.redis_at = Some(addr);
        self
    }

    /// Carry the adapter over NATS instead of Redis: start `servers` `nats-server`s (routed
    /// into one NATS cluster when more than one) and point node `i` at all of them, server
    /// `i % servers` first. Presence, cache, history and queue stay on the shared Redis, which
    /// this implies. The servers are reachable through [`Cluster::nats_mut`] (kill, restart).
    pub fn nats(mut self, servers: usize) -> Self {
        self.redis = true;
        self.nats_servers = servers;
        self
    }

    /// Carry the adapter over RabbitMQ instead of Redis: start a private RabbitMQ node and
    /// give every node `ADAPTER_DRIVER=rabbitmq` with its URL. Presence, cache, history and
    /// queue stay on the shared Redis (or the Redis Cluster), which this implies. The node is
    /// reachable through [`Cluster::rabbitmq_mut`] (kill, restart).
    pub fn rabbitmq(mut self) -> Self {
        self.redis = true;
        self.rabbitmq = true;
        self
    }

    /// Carry the adapter over Pulsar instead of Redis: start one `pulsar-lite` broker (an
    /// independent implementation of the Pulsar binary protocol) and give every node
    /// `ADAPTER_DRIVER=pulsar` and its `PULSAR_URL`. Presence, cache, history and queue stay
    /// on the shared Redis, which this implies. The broker is reachable through
    /// [`Cluster::pulsar_mut`] (kill, restart).
    pub fn pulsar(mut self) -> Self {
        self.redis = true;
        self.pulsar = true;
        self
    }

    /// Carry the adapter over the Kafka API instead of Redis: start a Tansu broker (memory
    /// storage) and point every node at it (`ADAPTER_DRIVER=kafka`). Presence, cache, history
    /// and queue stay on the shared Redis (or the Redis Cluster), which this implies. The
    /// broker is reachable through [`Cluster::kafka_mut`] (kill, restart).
    pub fn kafka(mut self) -> Self {
        self.redis = true;
        self.kafka = true;
        self
    }

    /// Put every Redis-backed part (adapter, presence, cache, history) on a Redis Cluster of
    /// 3 primaries with a replica each instead of a single Redis; with
    /// [`ClusterBuilder::nats`] the adapter stays on NATS and presence, cache and history go
    /// to the Redis Cluster. The cluster is reachable through [`Cluster::redis_cluster_mut`]
    /// (kill a primary, restart it). The nodes connect to the Redis servers directly (no
    /// per-node proxy: a cluster client follows redirections to the servers' own addresses).
    pub fn redis_cluster(mut self) -> Self {
        self.redis_cluster = true;
        self
    }

    /// With [`ClusterBuilder::nats`]: a broker-only cluster, no Redis at all. Presence is
    /// replicated over NATS (`PRESENCE_DRIVER=transport`); cache and history stay in each node.
    /// Call it after `nats`.
    pub fn broker_only(mut self) -> Self {
        self.redis = false;
        self.redis_at = None;
        self
    }

    /// Carry the adapter over Google Pub/Sub: start the official emulator and point every
    /// node at it (`ADAPTER_DRIVER=google-pubsub`, `PUBSUB_EMULATOR_HOST`). Presence, cache,
    /// history and queue stay on the shared Redis (or the Redis Cluster), which this implies.
    /// The emulator is reachable through [`Cluster::pubsub_mut`] (kill, restart).
    pub fn google_pubsub(mut self) -> Self {
        self.redis = true;
        self.google_pubsub = true;
        self
    }

    /// In-process or process nodes (default in-process).
    pub fn mode(mut self, mode: NodeMode) -> Self {
        self.mode = mode;
        self
    }

    /// The app every node serves (default [`crate::test_app`]).
    pub fn app(mut self, app: App) -> Self {
        self.app = app;
        self
    }

    /// Adjust node `i`'s settings after the testkit's defaults (and Redis wiring) are set.
    /// Process nodes receive them as environment variables ([`settings_env`]), which carry
    /// only the first app.
    pub fn settings(
        mut self,
        f: impl Fn(usize, &mut NodeSettings) + Send + Sync + 'static,
    ) -> Self {
        self.settings = Some(Box::new(f));
        self
    }

    /// Containers mode with these images and networking (sets the mode to
    /// [`NodeMode::Container`]). Without this call containers mode uses host networking and
    /// [`ContainerImages::from_env`](crate::containers::ContainerImages::from_env): images named
    /// by the environment, else built from the host's binaries.
    #[cfg(feature = "containers")]
    pub fn containers(mut self, options: ContainerOptions) -> Self {
        self.mode = NodeMode::Container;
        self.containers = options;
        self
    }

    /// Process and containers modes: adjust node `i`'s environment last (any docs/configuration.md variable).
    pub fn env(
        mut self,
        f: impl Fn(usize, &mut Vec<(String, String)>) + Send + Sync + 'static,
    ) -> Self {
        self.env = Some(Box::new(f));
        self
    }

    /// Start Redis (if asked), the proxies, the nodes and the balancer.
    pub async fn build(self) -> Result<Cluster, TestkitError> {
        if self.nodes == 0 {
            return Err(TestkitError::Usage(
                "a cluster needs at least one node".into(),
            ));
        }
        #[cfg(feature = "containers")]
        let containers = match self.mode {
            NodeMode::Container => Some(ContainerParts::start(&self.containers, self.redis).await?),
            _ => None,
        };
        #[cfg(not(feature = "containers"))]
        let containers: Option<ContainerParts> = None;
        let redis_cluster = if self.redis_cluster {
            Some(RedisCluster::start().await?)
        } else {
            None
        };
        let single_redis = self.redis && !self.redis_cluster;
        let redis = if single_redis && containers.is_none() && self.redis_at.is_none() {
            Some(RedisServer::start().await?)
        } else {
            None
        };
        // Where the nodes' proxies forward to; in bridge mode the nodes reach Redis directly.
        let redis_upstream = match (&redis, &containers) {
            _ if self.redis_at.is_some() => self.redis_at,
            (Some(redis), _) => Some(redis.addr()),
            (None, Some(parts)) => parts.proxy_upstream(),
            (None, None) => None,
        };
        let redis_direct = containers
            .as_ref()
            .and_then(ContainerParts::direct_redis_url);
        let pulsar = if self.pulsar {
            Some(PulsarBroker::start().await?)
        } else {
            None
        };
        let nats = if self.nats_servers > 0 {
            Some(NatsCluster::start_cluster(self.nats_servers).await?)
        } else {
            None
        };
        let pubsub = if self.google_pubsub {
            Some(PubSubEmulator::start().await?)
        } else {
            None
        };
        let rabbitmq = if self.rabbitmq {
            Some(RabbitMq::start().await?)
        } else {
            None
        };
        let kafka = if self.kafka {
            Some(KafkaBroker::start().await?)
        } else {
            None
        };
        let mut proxies = Vec::new();
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let mut settings = crate::test_settings(vec![self.app.clone()]);
            settings.node_id = format!("node-{i}");
            if redis_upstream.is_some() || redis_direct.is_some() {
                settings.cache.driver = "redis".into();
                settings.adapter.driver = "redis".into();
                settings.history.driver = "redis".into();
                settings.cluster.heartbeat_interval_ms = 200;
                settings.cluster.node_timeout_ms = 2000;
                settings.cluster.request_timeout_ms = 1000;
                match (redis_upstream, &redis_direct) {
                    (Some(upstream), _) => {
                        let proxy = TcpProxy::start(upstream).await?;
                        settings.redis.url = proxy.redis_url();
                        proxies.push(proxy);
                    }
                    (None, Some(url)) => settings.redis.url = url.clone(),
                    (None, None) => {}
                }
            }
            if let Some(rc) = &redis_cluster {
                settings.cache.driver = "redis-cluster".into();
                settings.adapter.driver = "redis-cluster".into();
                settings.history.driver = "redis-cluster".into();
                settings.redis.cluster_nodes = rc.urls();
                settings.cluster.heartbeat_interval_ms = 200;
                settings.cluster.node_timeout_ms = 2000;
                settings.cluster.request_timeout_ms = 1000;
            }
            if let Some(nats) = &nats {
                settings.adapter.driver = "nats".into();
                settings.presence.driver = if redis_cluster.is_some() {
                    "redis-cluster"
                } else if self.redis {
                    "redis"
                } else {
                    "transport"
                }
                .into();
                settings.nats.url = nats.urls_from(i % nats.len());
                settings.cluster.heartbeat_interval_ms = 200;
                settings.cluster.node_timeout_ms = 2000;
                settings.cluster.request_timeout_ms = 1000;
            }
            if let Some(emulator) = &pubsub {
                settings.adapter.driver = "google-pubsub".into();
                settings.presence.driver = if redis_cluster.is_some() {
                    "redis-cluster".into()
                } else {
                    "redis".into()
                };
                settings.google_pubsub.project_id = "sockudo-test".into();
                settings.google_pubsub.emulator_host = Some(emulator.host());
            }
            if let Some(mq) = &rabbitmq {
                settings.adapter.driver = "rabbitmq".into();
                settings.presence.driver = if redis_cluster.is_some() {
                    "redis-cluster".into()
                } else {
                    "redis".into()
                };
                settings.rabbitmq.url = mq.url();
            }
            if let Some(pulsar) = &pulsar {
                settings.adapter.driver = "pulsar".into();
                settings.presence.driver = if redis_cluster.is_some() {
                    "redis-cluster".into()
                } else {
                    "redis".into()
                };
                settings.pulsar.url = pulsar.url();
            }
            if let Some(kafka) = &kafka {
                settings.adapter.driver = "kafka".into();
                settings.presence.driver = if redis_cluster.is_some() {
                    "redis-cluster".into()
                } else {
                    "redis".into()
                };
                settings.kafka.brokers = kafka.brokers();
            }
            if let Some(f) = &self.settings {
                f(i, &mut settings);
            }
            let node = match self.mode {
                NodeMode::InProcess => {
                    ClusterNode::InProcess(Box::new(TestNode::start(settings).await?))
                }
                NodeMode::Process => {
                    let mut env = settings_env(&settings);
                    if let Some(f) = &self.env {
                        f(i, &mut env);
                    }
                    ClusterNode::Process(ProcessNode::start(env).await?)
                }
                #[cfg(feature = "containers")]
                NodeMode::Container => {
                    let parts = containers.as_ref().ok_or_else(|| {
                        TestkitError::Usage("containers mode was not set up".into())
                    })?;
                    let mut env = settings_env(&settings);
                    if let Some(f) = &self.env {
                        f(i, &mut env);
                    }
                    ClusterNode::Container(
                        ContainerNode::start(
                            &parts.engine,
                            &parts.sockudo_image,
                            parts.network,
                            env,
                        )
                        .await?,
                    )
                }
            };
            nodes.push(node);
        }
        let balancer = LoadBalancer::start(nodes.iter().map(ClusterNode::addr).collect()).await?;
        #[cfg(feature = "containers")]
        let redis_container = containers.and_then(|parts| parts.redis);
        Ok(Cluster {
            nodes,
            proxies,
            redis,
            nats,
            pubsub,
            rabbitmq,
            pulsar,
            kafka,
            redis_cluster,
            #[cfg(feature = "containers")]
            redis_container,
            balancer,
            app: self.app,
        })
    }
}

/// What containers mode sets up before the nodes: the engine, the images, Redis.
#[cfg(feature = "containers")]
struct ContainerParts {
    engine: DockerEngine,
    sockudo_image: String,
    network: ContainerNetwork,
    redis: Option<RedisContainer>,
    /// The Redis address the containers use (bridge mode).
    redis_container_addr: Option<String>,
}

#[cfg(feature = "containers")]
impl ContainerParts {
    async fn start(
        options: &ContainerOptions,
        with_redis: bool,
    ) -> Result<ContainerParts, TestkitError> {
        let engine = DockerEngine::connect().await?;
        let sockudo_image = image::sockudo_image(&engine, &options.images).await?;
        let (redis, redis_container_addr) = if with_redis {
            let redis_image = image::redis_image(&engine, &options.images).await?;
            let redis = RedisContainer::start(&engine, &redis_image, options.network).await?;
            let addr = redis.container_addr().await?;
            (Some(redis), Some(addr))
        } else {
            (None, None)
        };
        Ok(ContainerParts {
            engine,
            sockudo_image,
            network: options.network,
            redis,
            redis_container_addr,
        })
    }

    /// Host networking: the per-node proxies on the host forward to Redis's loopback port.
    fn proxy_upstream(&self) -> Option<SocketAddr> {
        match self.network {
            ContainerNetwork::Host => self.redis.as_ref().map(RedisContainer::addr),
            ContainerNetwork::Bridge => None,
        }
    }

    /// Bridge mode: the nodes use Redis's bridge address (no proxies, no `cut_redis`).
    fn direct_redis_url(&self) -> Option<String> {
        match self.network {
            ContainerNetwork::Host => None,
            ContainerNetwork::Bridge => self
                .redis_container_addr
                .as_ref()
                .map(|addr| format!("redis://{addr}")),
        }
    }
}

/// Without the feature there are no container parts; this keeps `build` free of `cfg`s.
#[cfg(not(feature = "containers"))]
struct ContainerParts;

#[cfg(not(feature = "containers"))]
impl ContainerParts {
    fn proxy_upstream(&self) -> Option<SocketAddr> {
        None
    }

    fn direct_redis_url(&self) -> Option<String> {
        None
    }
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub enum ClusterNode {
    /// An in-process node.
    InProcess(Box<TestNode>),
    /// A `sockudo` child process.
    Process(ProcessNode),
    /// A `sockudo` container.
    #[cfg(feature = "containers")]
    Container(ContainerNode),
}

impl ClusterNode {
    /// The node's listen address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            ClusterNode::InProcess(n) => n.addr(),
            ClusterNode::Process(n) => n.addr(),
            #[cfg(feature = "containers")]
            ClusterNode::Container(n) => n.addr(),
        }
    }

    /// `http://127.0.0.1:P`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The Pusher WebSocket URL for app `key` on this node.
    pub fn ws_url(&self, key: &str) -> String {
        crate::ws_url(self.addr(), key)
    }

    /// The in-process node, if this is one.
    pub fn as_in_process(&self) -> Option<&TestNode> {
        match self {
            ClusterNode::InProcess(n) => Some(n),
            _ => None,
        }
    }

    /// The process node, if this is one.
    pub fn as_process(&self) -> Option<&ProcessNode> {
        match self {
            ClusterNode::Process(n) => Some(n),
            _ => None,
        }
    }

    /// The container node, if this is one.
    #[cfg(feature = "containers")]
    pub fn as_container(&self) -> Option<&ContainerNode> {
        match self {
            ClusterNode::Container(n) => Some(n),
            _ => None,
        }
    }

    /// Crash the node (runtime dropped / SIGKILL / `docker kill`).
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        match self {
            ClusterNode::InProcess(n) => n.kill(),
            ClusterNode::Process(n) => n.kill(),
            #[cfg(feature = "containers")]
            ClusterNode::Container(n) => n.kill(),
        }
    }

    /// Kill if running, start again on the same port.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        match self {
            ClusterNode::InProcess(n) => n.restart().await,
            ClusterNode::Process(n) => n.restart().await,
            #[cfg(feature = "containers")]
            ClusterNode::Container(n) => n.restart().await,
        }
    }

    /// The node id the node runs (or will restart) with (`SOCKUDO_NODE_ID`).
    pub fn node_id(&self) -> Option<String> {
        match self {
            ClusterNode::InProcess(n) => Some(n.settings().node_id.clone()),
            ClusterNode::Process(n) => n.env_var("SOCKUDO_NODE_ID").map(str::to_string),
            #[cfg(feature = "containers")]
            ClusterNode::Container(n) => n
                .env()
                .iter()
                .rev()
                .find(|(k, _)| k == "SOCKUDO_NODE_ID")
                .map(|(_, v)| v.clone()),
        }
    }

    /// Kill if running, start again on the same port under a new node id: to the cluster a
    /// node that never existed, while the old id's heartbeat simply stops. Containers keep
    /// the environment they were created with, so containers mode refuses this.
    pub async fn restart_as(&mut self, node_id: &str) -> Result<(), TestkitError> {
        match self {
            ClusterNode::InProcess(n) => n.set_node_id(node_id),
            ClusterNode::Process(n) => n.set_env("SOCKUDO_NODE_ID", node_id),
            #[cfg(feature = "containers")]
            ClusterNode::Container(_) => {
                return Err(TestkitError::Usage(
                    "a container node cannot restart under a new node id".into(),
                ))
            }
        }
        self.restart().await
    }

    /// Graceful stop: the drain sequence (SIGTERM for a process, which must then exit 0).
    pub async fn drain(&mut self) -> Result<(), TestkitError> {
        match self {
            ClusterNode::InProcess(n) => n.drain().await,
            ClusterNode::Process(n) => {
                let status = n.terminate().await?;
                if status.success() {
                    Ok(())
                } else {
                    Err(TestkitError::Node(format!(
                        "sockudo exited with {status} after SIGTERM; log tail:\n{}",
                        n.log_tail(20)
                    )))
                }
            }
            #[cfg(feature = "containers")]
            ClusterNode::Container(n) => match n.terminate().await? {
                0 => Ok(()),
                code => Err(TestkitError::Node(format!(
                    "the sockudo container exited with {code} after SIGTERM; log tail:\n{}",
                    n.log_tail(20).await
                ))),
            },
        }
    }
}

/// A running cluster; everything stops when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: the balancer and nodes go before the proxies and Redis.
    balancer: LoadBalancer,
    nodes: Vec<ClusterNode>,
    proxies: Vec<TcpProxy>,
    redis: Option<RedisServer>,
    nats: Option<NatsCluster>,
    pubsub: Option<PubSubEmulator>,
    rabbitmq: Option<RabbitMq>,
    pulsar: Option<PulsarBroker>,
    kafka: Option<KafkaBroker>,
    redis_cluster: Option<RedisCluster>,
    #[cfg(feature = "containers")]
    redis_container: Option<RedisContainer>,
    app: App,
}

impl Cluster {
    /// A builder with 2 in-process nodes, no Redis, the test app.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 2,
            redis: false,
            redis_at: None,
            nats_servers: 0,
            kafka: false,
            redis_cluster: false,
            google_pubsub: false,
            rabbitmq: false,
            pulsar: false,
            mode: NodeMode::InProcess,
            app: crate::test_app(),
            settings: None,
            env: None,
            #[cfg(feature = "containers")]
            containers: ContainerOptions {
                images: crate::containers::ContainerImages::from_env(),
                ..ContainerOptions::default()
            },
        }
    }

    /// All nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Node `i`. Panics when out of range, like indexing (test code).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Node `i`, mutably.
    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        &mut self.nodes[i]
    }

    /// The NATS servers, when the adapter runs on NATS ([`ClusterBuilder::nats`]).
    pub fn nats(&self) -> Option<&NatsCluster> {
        self.nats.as_ref()
    }

    /// The NATS servers, to kill or restart one (see [`ClusterBuilder::nats`]).
    pub fn nats_mut(&mut self) -> Option<&mut NatsCluster> {
        self.nats.as_mut()
    }

    /// The Pub/Sub emulator, to kill or restart it (see [`ClusterBuilder::google_pubsub`]).
    pub fn pubsub_mut(&mut self) -> Option<&mut PubSubEmulator> {
        self.pubsub.as_mut()
    }

    /// The RabbitMQ node, when the adapter runs on RabbitMQ ([`ClusterBuilder::rabbitmq`]).
    pub fn rabbitmq(&self) -> Option<&RabbitMq> {
        self.rabbitmq.as_ref()
    }

    /// The RabbitMQ node, to kill or restart it (see [`ClusterBuilder::rabbitmq`]).
    pub fn rabbitmq_mut(&mut self) -> Option<&mut RabbitMq> {
        self.rabbitmq.as_mut()
    }

    /// The Pulsar broker, when the adapter runs on Pulsar ([`ClusterBuilder::pulsar`]).
    pub fn pulsar(&self) -> Option<&PulsarBroker> {
        self.pulsar.as_ref()
    }

    /// The Pulsar broker, to kill or restart it (see [`ClusterBuilder::pulsar`]).
    pub fn pulsar_mut(&mut self) -> Option<&mut PulsarBroker> {
        self.pulsar.as_mut()
    }

    /// The Kafka broker, to kill or restart it (see [`ClusterBuilder::kafka`]).
    pub fn kafka_mut(&mut self) -> Option<&mut KafkaBroker> {
        self.kafka.as_mut()
    }

    /// The Redis Cluster, to kill or restart a server (see [`ClusterBuilder::redis_cluster`]).
    pub fn redis_cluster_mut(&mut self) -> Option<&mut RedisCluster> {
        self.redis_cluster.as_mut()
    }

    /// The Redis Cluster (see [`ClusterBuilder::redis_cluster`]).
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        self.redis_cluster.as_ref()
    }

    /// The shared Redis, when the cluster started one.
    pub fn redis(&self) -> Option<&RedisServer> {
        self.redis.as_ref()
    }

    /// The shared Redis container (containers mode with `redis(true)`).
    #[cfg(feature = "containers")]
    pub fn redis_container(&self) -> Option<&RedisContainer> {
        self.redis_container.as_ref()
    }

    /// Node `i`'s proxy to Redis, when the cluster has Redis (not in bridge containers mode).
    pub fn redis_proxy(&self, i: usize) -> Option<&TcpProxy> {
        self.proxies.get(i)
    }

    /// The balancer.
    pub fn balancer(&self) -> &LoadBalancer {
        &self.balancer
    }

    /// `http://127.0.0.1:P` of the balancer.
    pub fn balancer_url(&self) -> String {
        self.balancer.url()
    }

    /// The app's WebSocket URL through the balancer.
    pub fn balancer_ws_url(&self) -> String {
        self.balancer.ws_url(&self.app.key)
    }

    /// The app's WebSocket URL on node `i`.
    pub fn ws_url(&self, i: usize) -> String {
        self.nodes[i].ws_url(&self.app.key)
    }

    /// The app every node serves.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// A signed API client for node `i`.
    pub fn api(&self, i: usize) -> ApiClient {
        ApiClient::new(
            &self.nodes[i].http_url(),
            &self.app.id,
            &self.app.key,
            &self.app.secret,
        )
    }

    /// A signed API client through the balancer.
    pub fn balancer_api(&self) -> ApiClient {
        ApiClient::new(
            &self.balancer.url(),
            &self.app.id,
            &self.app.key,
            &self.app.secret,
        )
    }

    /// [`sockudo_client::ClientOptions`] for the app on node `i` (protocol 7; set `.protocol`
    /// for V2). [`Cluster::ws_url`] is the full connect URL for [`TestClient`]; this is the
    /// same node for `sockudo-client`, which builds its URL itself.
    pub fn client_options(&self, i: usize) -> sockudo_client::ClientOptions {
        self.options_for(self.nodes[i].addr())
    }

    /// [`Cluster::client_options`] through the balancer.
    pub fn balancer_client_options(&self) -> sockudo_client::ClientOptions {
        self.options_for(self.balancer.addr())
    }

    fn options_for(&self, addr: SocketAddr) -> sockudo_client::ClientOptions {
        sockudo_client::ClientOptions::new(self.app.key.clone())
            .host(addr.ip().to_string())
            .port(addr.port())
    }

    /// A connected client on node `i`.
    pub async fn client(&self, i: usize) -> Result<TestClient, TestkitError> {
        TestClient::connect(&self.ws_url(i)).await
    }

    /// A connected client through the balancer.
    pub async fn balancer_client(&self) -> Result<TestClient, TestkitError> {
        TestClient::connect(&self.balancer_ws_url()).await
    }

    /// Crash node `i`. The balancer skips it while its port refuses connections.
    pub fn kill_node(&mut self, i: usize) -> Result<(), TestkitError> {
        self.checked(i)?.kill()
    }

    /// Restart node `i` on its port (fresh state).
    pub async fn restart_node(&mut self, i: usize) -> Result<(), TestkitError> {
        self.checked(i)?.restart().await
    }

    /// Restart node `i` on its port under a new node id (see [`ClusterNode::restart_as`]).
    pub async fn restart_node_as(&mut self, i: usize, node_id: &str) -> Result<(), TestkitError> {
        self.checked(i)?.restart_as(node_id).await
    }

    /// Drain node `i` gracefully.
    pub async fn drain_node(&mut self, i: usize) -> Result<(), TestkitError> {
        self.checked(i)?.drain().await
    }

    /// Kill Redis (its data is lost).
    pub fn stop_redis(&mut self) -> Result<(), TestkitError> {
        #[cfg(feature = "containers")]
        if let Some(redis) = self.redis_container.as_mut() {
            return redis.stop();
        }
        self.redis_mut()?.stop()
    }

    /// Start Redis again on the same port, empty.
    pub async fn start_redis(&mut self) -> Result<(), TestkitError> {
        #[cfg(feature = "containers")]
        if let Some(redis) = self.redis_container.as_mut() {
            return redis.start_again().await;
        }
        self.redis_mut()?.start_again().await
    }

    /// Cut node `i`'s link to Redis: live connections drop, new ones are refused.
    pub fn cut_redis(&self, i: usize) -> Result<(), TestkitError> {
        self.proxy(i)?.cut();
        Ok(())
    }

    /// Restore node `i`'s link to Redis.
    pub fn restore_redis(&self, i: usize) -> Result<(), TestkitError> {
        self.proxy(i)?.restore();
        Ok(())
    }

    fn checked(&mut self, i: usize) -> Result<&mut ClusterNode, TestkitError> {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| TestkitError::Usage(format!("node {i} does not exist (cluster of {n})")))
    }

    fn redis_mut(&mut self) -> Result<&mut RedisServer, TestkitError> {
        self.redis
            .as_mut()
            .ok_or_else(|| TestkitError::Usage("the cluster was built without redis(true)".into()))
    }

    fn proxy(&self, i: usize) -> Result<&TcpProxy, TestkitError> {
        self.proxies.get(i).ok_or_else(|| {
            TestkitError::Usage(format!(
                "no Redis proxy for node {i} (built without redis(true)?)"
            ))
        })
    }
}
