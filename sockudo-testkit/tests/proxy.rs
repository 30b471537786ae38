//! TcpProxy: forwarding, cut (live connections dropped, new ones refused) and restore.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{echo_server, is_closed, read_n};
use sockudo_testkit::{RedisServer, TcpProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn cut_and_restore_are_seen_by_a_client() {
    let upstream = echo_server("hi").await;
    let proxy = TcpProxy::start(upstream).await.unwrap();

    let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_n(&mut live, 2).await, "hi");
    live.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut live, 4).await, "ping");
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(proxy.connections_active(), 1);

    proxy.cut();
    assert!(proxy.is_cut());
    assert!(is_closed(&mut live).await, "a cut drops live connections");

    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        is_closed(&mut refused).await,
        "while cut, new connections are closed at once"
    );
    assert_eq!(proxy.connections_refused(), 1);

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_n(&mut again, 2).await, "hi");
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(proxy.connections_active(), 1);
}

#[tokio::test]
async fn proxies_redis() {
    let redis = RedisServer::start().await.unwrap();
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    assert!(sockudo_testkit::redis::ping(proxy.addr()).await);
    proxy.cut();
    assert!(!sockudo_testkit::redis::ping(proxy.addr()).await);
    proxy.restore();
    assert!(sockudo_testkit::redis::ping(proxy.addr()).await);
}
