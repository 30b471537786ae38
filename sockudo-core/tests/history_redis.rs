//! `RedisHistoryStore` against a real `redis-server` (feature `redis`): the `HistoryStore`
//! conformance suite, plus lost state (FLUSHALL, partial loss), several nodes on one Redis,
//! and a dead Redis. Each test starts its own server on a free loopback port.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sockudo_core::history::{
    conformance, HistoryError, HistoryStore, RedisHistoryStore, Retention,
};

use redis_server::RedisServer;

/// A raw command, to tamper with the store's keys.
async fn cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

const OP_TIMEOUT: Duration = Duration::from_millis(500);

async fn store(server: &RedisServer, retention: Retention) -> Arc<dyn HistoryStore> {
    Arc::new(
        RedisHistoryStore::connect(&server.url(), "t:", retention, OP_TIMEOUT)
            .await
            .unwrap(),
    )
}

fn frame(sid: &str, serial: u64) -> Bytes {
    Bytes::from(format!("{sid}/{serial}"))
}

const WINDOW: Duration = Duration::from_secs(60);

async fn append(store: &dyn HistoryStore, ch: &str, mid: &str) -> sockudo_core::history::Appended {
    store.append("app", ch, mid, WINDOW, &frame).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_passes_conformance() {
    let server = RedisServer::start();
    let s = store(&server, conformance::RETENTION).await;
    conformance::run_all(&s, "app-1").await;
    // Again on the same server: channels are namespaced per run.
    conformance::run_all(&s, "app-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_age_retention() {
    let server = RedisServer::start();
    let s = store(&server, conformance::AGE_RETENTION).await;
    conformance::age_retention(&s, "app-age").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_starts_a_new_stream() {
    let server = RedisServer::start();
    let s = store(&server, Retention::default()).await;
    let first = append(s.as_ref(), "c", "1").await;
    append(s.as_ref(), "c", "2").await;
    append(s.as_ref(), "d", "1").await;
    cmd(&server, &["FLUSHALL"]).await;
    // Head after the flush: a new generation, never the old id at serial 0.
    let head = s.head("app", "c").await.unwrap();
    assert_ne!(head.stream_id, first.stream_id);
    assert_eq!(head.serial, 0);
    // Append on a channel whose head this node still remembers: a new generation too.
    let d = append(s.as_ref(), "d", "2").await;
    assert_ne!(d.stream_id, first.stream_id);
    assert_eq!((d.serial, d.duplicate), (1, false));
    // A message id seen before the flush is new again.
    let c = append(s.as_ref(), "c", "1").await;
    assert_eq!(
        (c.stream_id.as_str(), c.serial, c.duplicate),
        (head.stream_id.as_str(), 1, false)
    );
    let page = s.read_after("app", "d", 0, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].frame, frame(&d.stream_id, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_loss_starts_a_new_stream() {
    let server = RedisServer::start();
    let redis = RedisHistoryStore::connect(&server.url(), "t:", Retention::default(), OP_TIMEOUT)
        .await
        .unwrap();
    let keys = redis.keys("app", "c");
    let s: Arc<dyn HistoryStore> = Arc::new(redis);

    // Meta lost, stream still there.
    let a = append(s.as_ref(), "c", "1").await;
    append(s.as_ref(), "c", "2").await;
    cmd(&server, &["DEL", &keys.meta]).await;
    let page = s.read_after("app", "c", 0, 10).await.unwrap();
    assert_ne!(page.stream_id, a.stream_id);
    assert!(
        page.messages.is_empty(),
        "the old generation's entries are gone"
    );
    assert_eq!(page.newest_serial, 0);
    let b = append(s.as_ref(), "c", "3").await;
    assert_eq!(
        (b.stream_id.as_str(), b.serial),
        (page.stream_id.as_str(), 1)
    );

    // Stream lost, meta still there.
    append(s.as_ref(), "c", "4").await;
    cmd(&server, &["DEL", &keys.stream]).await;
    let c = append(s.as_ref(), "c", "5").await;
    assert_ne!(c.stream_id, b.stream_id);
    assert_eq!(c.serial, 1);

    // Meta rolled back below the stream (a partial restore).
    append(s.as_ref(), "c", "6").await;
    append(s.as_ref(), "c", "7").await;
    cmd(&server, &["HSET", &keys.meta, "serial", "1"]).await;
    let head = s.head("app", "c").await.unwrap();
    assert_ne!(head.stream_id, c.stream_id);
    assert_eq!(head.serial, 0);

    // Meta rolled back while the stream's entries are trimmed: XADD refuses the id.
    append(s.as_ref(), "c", "8").await;
    append(s.as_ref(), "c", "9").await;
    cmd(&server, &["XTRIM", &keys.stream, "MAXLEN", "0"]).await;
    cmd(&server, &["HSET", &keys.meta, "serial", "1"]).await;
    let e = append(s.as_ref(), "c", "10").await;
    assert_ne!(e.stream_id, head.stream_id);
    assert_eq!(e.serial, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_sharing_redis_get_contiguous_serials() {
    let server = RedisServer::start();
    let nodes = [
        store(&server, Retention::default()).await,
        store(&server, Retention::default()).await,
        store(&server, Retention::default()).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let node = Arc::clone(&nodes[i % 3]);
        tasks.push(tokio::spawn(async move {
            append(node.as_ref(), "shared", &format!("m{i}")).await
        }));
    }
    let mut serials = Vec::new();
    for t in tasks {
        serials.push(t.await.unwrap().serial);
    }
    serials.sort_unstable();
    assert_eq!(serials, (1..=60).collect::<Vec<_>>());
    // Every node sees the same contiguous stream.
    for node in &nodes {
        let page = node.read_after("app", "shared", 0, 100).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.serial).collect::<Vec<_>>(),
            (1..=60).collect::<Vec<_>>()
        );
        for m in &page.messages {
            assert_eq!(m.frame, frame(&page.stream_id, m.serial));
        }
    }
    // A duplicate through another node is still a duplicate.
    let again = append(nodes[1].as_ref(), "shared", "m0").await;
    assert!(again.duplicate);
}

fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, HistoryError>) {
    assert!(
        matches!(r, Err(HistoryError::Unavailable(_))),
        "expected Unavailable, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_is_unavailable_promptly() {
    let mut server = RedisServer::start();
    let s = store(&server, Retention::default()).await;
    append(s.as_ref(), "c", "1").await;
    server.stop();
    let bound = OP_TIMEOUT + Duration::from_millis(500);
    for _ in 0..3 {
        let t = Instant::now();
        assert_unavailable(s.append("app", "c", "2", WINDOW, &frame).await);
        assert!(t.elapsed() < bound, "append took {:?}", t.elapsed());
        let t = Instant::now();
        assert_unavailable(s.read_after("app", "c", 0, 10).await);
        assert_unavailable(s.head("app", "c").await);
        assert_unavailable(s.read_before("app", "c", None, 10).await);
        assert_unavailable(s.reset("app", "c").await);
        assert!(t.elapsed() < bound * 4, "reads took {:?}", t.elapsed());
    }
    // Connecting to a dead server fails within the timeout too.
    let t = Instant::now();
    assert_unavailable(
        RedisHistoryStore::connect(&server.url(), "t:", Retention::default(), OP_TIMEOUT).await,
    );
    assert!(t.elapsed() < bound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_redis_without_persistence_means_a_new_stream() {
    let mut server = RedisServer::start();
    let port = server.port;
    let s = store(&server, Retention::default()).await;
    let a = append(s.as_ref(), "c", "1").await;
    server.stop();
    let _server = RedisServer::start_on(port);
    // The connection manager reconnects within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        match s.append("app", "c", "2", WINDOW, &frame).await {
            Ok(b) => break b,
            Err(HistoryError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("no reconnection: {e}"),
        }
    };
    assert_ne!(b.stream_id, a.stream_id);
    assert_eq!(b.serial, 1);
}

/// Idle channels are reclaimed by Redis itself: every key of a stream carries a TTL of the
/// retention's age plus a minute, set by appends; a read gives one only to keys without one
/// and never extends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keys_expire_with_the_retention() {
    let server = RedisServer::start();
    let retention = Retention {
        max_messages: 10,
        max_age: Duration::from_secs(30),
    };
    let redis = RedisHistoryStore::connect(&server.url(), "t:", retention, OP_TIMEOUT)
        .await
        .unwrap();
    let pttl = |key: String| {
        let server = &server;
        async move {
            match cmd(server, &["PTTL", &key]).await {
                redis::Value::Int(n) => n,
                other => panic!("PTTL answered {other:?}"),
            }
        }
    };
    let ceiling = 90_000;
    // A head read of a channel nobody used creates a meta key, with a TTL.
    redis.head("app", "read-only").await.unwrap();
    let keys = redis.keys("app", "read-only");
    let t = pttl(keys.meta.clone()).await;
    assert!(t > 0 && t <= ceiling, "meta TTL {t}");
    // Appends set both keys' TTLs.
    append(&redis, "busy", "m1").await;
    let keys = redis.keys("app", "busy");
    for k in [&keys.meta, &keys.stream] {
        let t = pttl(k.clone()).await;
        assert!(t > 0 && t <= ceiling, "{k} TTL {t}");
    }
    // A read does not extend it.
    cmd(&server, &["PEXPIRE", &keys.meta, "5000"]).await;
    redis.read_after("app", "busy", 0, 10).await.unwrap();
    let t = pttl(keys.meta.clone()).await;
    assert!(t > 0 && t <= 5000, "a read extended the meta TTL to {t}");
}
