//! App manager benchmark (BENCHMARKS.md, "App manager"):
//! 1. connection setup rate (WebSocket handshake + `connection_established` + a public
//!    subscribe acknowledged) against an in-process node with the static manager, and with
//!    the PostgreSQL and MySQL managers with a warm cache;
//! 2. app lookups per second against the database with a cold cache (every key read once).
//!
//! ```sh
//! cargo run --release -p sockudo-testkit --example app_manager_bench -- [connections] [concurrency] [apps]
//! ```
//! Defaults: 2000 connections, 16 at a time, 1000 apps. Needs the machine's PostgreSQL and
//! MariaDB (see `sockudo_testkit::sql`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use sockudo_core::app::{
    App, AppManager, AppStore, CacheOptions, CachedAppManager, SqlAppManager, SqlOptions,
};
use sockudo_server::config::{NodeSettings, SecretUrl};
use sockudo_testkit::sql::{ScratchDb, SqlServer};
use sockudo_testkit::{TestClient, TestNode};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn app(i: usize) -> App {
    App::new(
        format!("bench-{i}"),
        format!("bench-key-{i}"),
        "bench-secret-0123456789",
    )
}

/// Connections per second: `n` handshakes + subscribe, `c` at a time.
async fn setup_rate(node: &TestNode, key: &str, n: usize, c: usize) -> f64 {
    let url = node.ws_url(key);
    // Warm: the first lookup fills the cache.
    TestClient::connect(&url)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(c, |i| {
            let url = url.clone();
            async move {
                let mut client = TestClient::connect(&url).await.unwrap();
                client
                    .subscribe(&format!("bench-{}", i % 64))
                    .await
                    .unwrap();
                client.close().await.unwrap();
            }
        })
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn sql_node(db: &ScratchDb) -> TestNode {
    let mut s = NodeSettings::default();
    s.app_manager.driver = db.server().driver().into();
    s.database_url = Some(SecretUrl(db.url().to_owned()));
    s.metrics_port = 0;
    TestNode::start(s).await.unwrap()
}

/// Cold lookups per second: each key read once through a fresh cache, `c` at a time.
async fn cold_lookups(m: &SqlAppManager, apps: usize, c: usize) -> (f64, f64) {
    let cached = Arc::new(CachedAppManager::new(m.clone(), CacheOptions::default()));
    let started = Instant::now();
    stream::iter(0..apps)
        .for_each_concurrent(c, |i| {
            let cached = Arc::clone(&cached);
            async move {
                assert!(cached
                    .find_by_key(&format!("bench-key-{i}"))
                    .await
                    .unwrap()
                    .is_some());
            }
        })
        .await;
    let cold = apps as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for round in 0..10 {
        for i in 0..apps {
            let key = format!("bench-key-{}", (i + round) % apps);
            assert!(cached.find_by_key(&key).await.unwrap().is_some());
        }
    }
    let warm = (apps * 10) as f64 / started.elapsed().as_secs_f64();
    (cold, warm)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (n, c, apps) = (arg(1, 2000), arg(2, 16), arg(3, 1000));
    println!("connections={n} concurrency={c} apps={apps}");
    let s = NodeSettings {
        apps: vec![app(0)],
        metrics_port: 0,
        ..NodeSettings::default()
    };
    let static_node = TestNode::start(s).await.unwrap();
    let rate = setup_rate(&static_node, "bench-key-0", n, c).await;
    println!("static   : {rate:8.0} connections/s (handshake + subscribe)");
    drop(static_node);
    for server in [SqlServer::Postgres, SqlServer::MySql] {
        let db = ScratchDb::create(server).await.unwrap();
        let m = SqlAppManager::connect(SqlOptions::new(db.url()))
            .await
            .unwrap();
        let t = Instant::now();
        for i in 0..apps {
            m.create(&app(i)).await.unwrap();
        }
        let insert = apps as f64 / t.elapsed().as_secs_f64();
        let node = sql_node(&db).await;
        let rate = setup_rate(&node, "bench-key-0", n, c).await;
        let name = server.driver();
        println!("{name:<9}: {rate:8.0} connections/s (handshake + subscribe, warm cache)");
        let (cold, warm) = cold_lookups(&m, apps, c).await;
        println!("{name:<9}: {cold:8.0} cold lookups/s ({c} at a time), {warm:.0} warm lookups/s, {insert:.0} admin inserts/s (sequential)");
        drop(node);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
