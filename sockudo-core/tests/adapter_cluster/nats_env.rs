//! The cluster scenarios over `NatsTransport` on a `nats-server` each test starts, with the
//! in-process presence store (presence is the store's business, not the transport's).

use sockudo_core::adapter::{NatsTransport, NatsTransportOptions};

use super::*;

use crate::broker_env::{assert_cluster_heals, assert_outage_contained, BrokerEnv};
use crate::nats_server::NatsServer;

pub struct NatsEnv {
    pub server: NatsServer,
    presence: Arc<MemoryPresenceStore>,
}

impl NatsEnv {
    pub async fn new() -> Self {
        NatsEnv {
            server: NatsServer::start(),
            presence: Arc::new(MemoryPresenceStore::new()),
        }
    }

    fn options(&self) -> NatsTransportOptions {
        NatsTransportOptions {
            servers: vec![self.server.url()],
            ..NatsTransportOptions::default()
        }
    }
}

#[async_trait]
impl BrokerEnv for NatsEnv {
    type T = NatsTransport;
    async fn connect(&self) -> Arc<NatsTransport> {
        Arc::new(NatsTransport::connect(self.options()).await.unwrap())
    }
    fn shared_presence(&self) -> Arc<MemoryPresenceStore> {
        self.presence.clone()
    }
}

scenarios!(NatsEnv::new().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_presence_conformance_over_nats() {
    use sockudo_core::adapter::presence::conformance;
    let env = NatsEnv::new().await;
    let t = env.transport().await;
    let nodes = conformance::ReplicatedNodes::new(move || t.clone());
    conformance::run_all(&nodes, "nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_fails_when_no_server_answers() {
    let port = crate::redis_server::free_port();
    let opts = NatsTransportOptions {
        servers: vec![format!("nats://127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(500),
        ..NatsTransportOptions::default()
    };
    assert!(matches!(
        NatsTransport::connect(opts).await,
        Err(AdapterError::Unavailable(_))
    ));
    let none = NatsTransportOptions {
        servers: Vec::new(),
        ..NatsTransportOptions::default()
    };
    assert!(NatsTransport::connect(none).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restart_is_visible_and_heals() {
    let mut env = NatsEnv::new().await;
    let nodes = cluster(&env, 2, &fast()).await;
    env.server.stop();
    assert_outage_contained(&nodes, Duration::from_secs(3)).await;
    env.server.start_again();
    assert_cluster_heals(&nodes, Duration::from_secs(10)).await;
}
