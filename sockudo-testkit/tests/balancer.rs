//! LoadBalancer: round robin, skipping dead backends, replacing the backend list.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{echo_server, read_n};
use sockudo_testkit::LoadBalancer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

async fn greeting(lb: &LoadBalancer) -> String {
    let mut stream = TcpStream::connect(lb.addr()).await.unwrap();
    let hello = read_n(&mut stream, 1).await;
    stream.write_all(b"echo").await.unwrap();
    assert_eq!(read_n(&mut stream, 4).await, "echo", "bytes flow both ways");
    hello
}

/// An address nothing listens on.
async fn dead_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn round_robin_across_two_servers() {
    let a = echo_server("A").await;
    let b = echo_server("B").await;
    let lb = LoadBalancer::start(vec![a, b]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(greeting(&lb).await);
    }
    assert_eq!(seen, ["A", "B", "A", "B"]);
    assert_eq!(lb.routed().get(&a), Some(&2));
    assert_eq!(lb.routed().get(&b), Some(&2));
    assert!(lb.url().starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn skips_dead_backends_and_follows_set_backends() {
    let a = echo_server("A").await;
    let b = echo_server("B").await;
    let dead = dead_addr().await;
    let lb = LoadBalancer::start(vec![dead, a]).await.unwrap();
    for _ in 0..3 {
        assert_eq!(greeting(&lb).await, "A", "the dead backend is skipped");
    }
    lb.set_backends(vec![b]);
    assert_eq!(lb.backends(), vec![b]);
    assert_eq!(greeting(&lb).await, "B");
}
