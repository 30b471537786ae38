//! The cluster scenarios over `RedisClusterTransport` (sharded pub/sub) and
//! `RedisPresenceStore` on a Redis Cluster each test starts (three primaries).

use sockudo_core::adapter::{RedisClusterTransport, RedisPresenceOptions, RedisPresenceStore};
use sockudo_core::redis_conn::RedisEndpoint;

use super::*;

use crate::redis_cluster::RedisClusterProcess;

pub struct RedisClusterEnv {
    pub cluster: RedisClusterProcess,
    presence: Arc<RedisPresenceStore>,
}

impl RedisClusterEnv {
    pub async fn new() -> Self {
        let cluster = tokio::task::spawn_blocking(RedisClusterProcess::start)
            .await
            .unwrap();
        let opts = RedisPresenceOptions {
            prefix: format!("p{:08x}", rand::random::<u32>()),
            ..RedisPresenceOptions::default()
        };
        let presence =
            RedisPresenceStore::connect_with(RedisEndpoint::Cluster(cluster.urls()), opts)
                .await
                .unwrap();
        RedisClusterEnv {
            cluster,
            presence: Arc::new(presence),
        }
    }
}

#[async_trait]
impl Env for RedisClusterEnv {
    type T = RedisClusterTransport;
    async fn transport(&self) -> Arc<RedisClusterTransport> {
        Arc::new(
            RedisClusterTransport::connect(&self.cluster.urls())
                .await
                .unwrap(),
        )
    }
    async fn presence(
        &self,
        _id: &str,
        _t: &Arc<RedisClusterTransport>,
        _o: &ClusterOptions,
    ) -> Arc<dyn PresenceStore> {
        self.presence.clone()
    }
}

scenarios!(RedisClusterEnv::new().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_fails_when_no_seed_answers() {
    let port = crate::redis_server::free_port();
    let seeds = vec![format!("redis://127.0.0.1:{port}")];
    assert!(matches!(
        RedisClusterTransport::connect(&seeds).await,
        Err(AdapterError::Unavailable(_))
    ));
    assert!(RedisClusterTransport::connect(&[]).await.is_err());
}
