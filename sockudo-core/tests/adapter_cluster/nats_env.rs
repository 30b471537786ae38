//! The cluster scenarios over `NatsTransport` on a `nats-server` each test starts, with the
//! in-process presence store (presence is the store's business, not the transport's).

use sockudo_core::adapter::{NatsTransport, NatsTransportOptions};

use super::*;

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
impl Env for NatsEnv {
    type T = NatsTransport;
    async fn transport(&self) -> Arc<NatsTransport> {
        Arc::new(NatsTransport::connect(self.options()).await.unwrap())
    }
    async fn presence(
        &self,
        _id: &str,
        _t: &Arc<NatsTransport>,
        _o: &ClusterOptions,
    ) -> Arc<dyn PresenceStore> {
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
    let a = nodes[0].0.clone();
    assert!(
        eventually(Duration::from_secs(3), || !a.is_healthy()).await,
        "outage not visible"
    );
    assert!(a.publish(msg("c", "lost")).await.is_err());
    // A subscription the broker cannot confirm is refused (a client would be told 503).
    assert!(matches!(
        a.watch_channel("app", "during-outage").await,
        Err(AdapterError::Unavailable(_))
    ));
    a.unwatch_channel("app", "during-outage");
    // Longer than node_timeout: nobody may be declared dead for a transport outage.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(nodes[0].1.removed.lock().is_empty());
    env.server.start_again();
    let (a, b) = (nodes[0].0.clone(), nodes[1].0.clone());
    assert!(
        eventually(Duration::from_secs(10), || a.is_healthy() && b.is_healthy()).await,
        "the client did not reconnect"
    );
    // Subscriptions came back by themselves: a publish after the restart reaches the peer.
    assert!(
        eventually(Duration::from_secs(5), || {
            let a = a.clone();
            tokio::spawn(async move { a.publish(msg("c", "back")).await });
            nodes[1].1.frames().contains(&Bytes::from_static(b"back"))
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(3), || a.live_nodes()
            == vec!["n1".to_owned()]
            && b.live_nodes() == vec!["n0".to_owned()])
        .await
    );
}
