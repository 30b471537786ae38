//! Every Redis-backed store on a real Redis Cluster (feature `redis`): the cache, queue,
//! history, presence and push-store conformance suites, unchanged, through `RedisEndpoint::Cluster`.
//! Each test starts its own three-primary cluster on free loopback ports. (The cluster
//! adapter's scenarios over sharded pub/sub run in `adapter_cluster.rs`.)
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use std::sync::Arc;
use std::time::Duration;

use sockudo_core::adapter::{
    presence::conformance as presence_conformance, PresenceJoin, PresenceStore,
    RedisPresenceOptions, RedisPresenceStore,
};
use sockudo_core::cache::{Cache, RedisCache};
use sockudo_core::history::{HistoryStore, RedisHistoryStore};
use sockudo_core::queue::{Queue, RedisQueue, RedisQueueOptions};
use sockudo_core::redis_conn::RedisEndpoint;

use redis_cluster::RedisClusterProcess;

async fn start() -> (RedisClusterProcess, RedisEndpoint) {
    let cluster = tokio::task::spawn_blocking(RedisClusterProcess::start)
        .await
        .unwrap();
    let endpoint = RedisEndpoint::Cluster(cluster.urls());
    (cluster, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_conformance_on_redis_cluster() {
    let (_cluster, endpoint) = start().await;
    let cache: Arc<dyn Cache> = Arc::new(RedisCache::connect(endpoint, "t:").await.unwrap());
    sockudo_core::cache::conformance::run_all(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance_on_redis_cluster() {
    let (_cluster, endpoint) = start().await;
    let q: Arc<dyn Queue> = Arc::new(
        RedisQueue::connect_with(endpoint, RedisQueueOptions::default())
            .await
            .unwrap(),
    );
    sockudo_core::queue::conformance::run_all(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_store_conformance_on_redis_cluster() {
    let (_cluster, endpoint) = start().await;
    let store: Arc<dyn sockudo_core::push::PushStore> = Arc::new(
        sockudo_core::push::RedisPushStore::connect(endpoint, "t:push:")
            .await
            .unwrap(),
    );
    sockudo_core::push::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_conformance_on_redis_cluster() {
    let (_cluster, endpoint) = start().await;
    let retention = sockudo_core::history::conformance::RETENTION;
    let store: Arc<dyn HistoryStore> = Arc::new(
        RedisHistoryStore::connect(endpoint, "t:", retention, Duration::from_millis(500))
            .await
            .unwrap(),
    );
    sockudo_core::history::conformance::run_all(&store, "app-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_conformance_on_redis_cluster() {
    let (cluster, endpoint) = start().await;
    let store = Arc::new(RedisPresenceStore::connect(endpoint.clone()).await.unwrap());
    presence_conformance::run_all(&presence_conformance::SharedNodes(store.clone()), "a").await;
    let other = RedisPresenceStore::connect_with(
        endpoint,
        RedisPresenceOptions {
            prefix: "other".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    presence_conformance::run_all(&presence_conformance::SharedNodes(Arc::new(other)), "a").await;
    assert!(store.nodes().await.unwrap().is_empty(), "no node left");
    // Only the channels' sequence numbers stay (they expire), on whichever shard.
    let keys = cluster.all_keys();
    assert!(
        keys.iter().all(|k| k.ends_with(":seq")),
        "left behind: {keys:?}"
    );
}

/// Memberships of one node spread over many channels, hence over every shard: concurrent
/// sweeps still report each removal exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweeps_across_shards_report_each_member_once() {
    let (_cluster, endpoint) = start().await;
    let store = Arc::new(RedisPresenceStore::connect(endpoint).await.unwrap());
    for i in 0..300 {
        let ch = format!("presence-{}", i % 37);
        let user = format!("u{i}");
        let join = PresenceJoin {
            app_id: "app",
            channel: &ch,
            user_id: &user,
            info: None,
            max_members: 1000,
        };
        store.join("dead", join).await.unwrap();
    }
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.sweep_node("dead").await.unwrap() })
        })
        .collect();
    let mut users = Vec::new();
    for s in sweeps {
        users.extend(s.await.unwrap().into_iter().map(|r| r.user_id));
    }
    users.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    want.sort();
    assert_eq!(users, want);
    assert!(store.nodes().await.unwrap().is_empty());
}
