//! The listener's bounds over real sockets: half-sent upgrades and silent sockets are closed
//! after the header timeout, oversized request heads get 431, connections beyond the pending
//! cap are closed at once, and after each the node serves a fresh client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header timeout the rows use (short, so the suite stays fast).
const HEADER_TIMEOUT_MS: u64 = 300;
/// Every wait for the node to act is bounded by this, far above what it is configured to.
const PATIENCE: Duration = Duration::from_secs(10);

async fn node(max_pending: usize) -> TestNode {
    let mut s = settings(vec![test_app()]);
    s.http_header_timeout_ms = HEADER_TIMEOUT_MS;
    s.max_pending_connections = max_pending;
    TestNode::start(s).await
}

/// Read until EOF (or a reset); returns what was read, or `None` when the socket stayed open
/// for [`PATIENCE`].
async fn read_to_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn fresh_client_works(n: &TestNode) {
    let mut c = n.client(&test_app().key).await;
    c.subscribe("after-abuse").await;
    c.assert_alive().await;
}

#[tokio::test]
async fn a_half_sent_upgrade_is_closed_after_the_header_timeout() {
    let n = node(1024).await;
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    s.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut s).await.is_some(), "still open");
    fresh_client_works(&n).await;
}

#[tokio::test]
async fn a_socket_that_never_sends_a_request_is_closed() {
    let n = node(1024).await;
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    assert!(read_to_close(&mut s).await.is_some(), "still open");
    fresh_client_works(&n).await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let n = node(1024).await;
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let big = "a".repeat(200 * 1024);
    let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The node may close before reading it all: a write error is fine, the answer is not.
    let _ = s.write_all(req.as_bytes()).await;
    let answer = read_to_close(&mut s).await.expect("closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // A normal-sized request is still served.
    let mut ok = TcpStream::connect(n.addr).await.unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut ok).await.expect("closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_pending_cap_are_closed_at_once() {
    let n = node(3).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(n.addr).await.unwrap());
    }
    // Let the node accept all three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fourth = TcpStream::connect(n.addr).await.unwrap();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let answer = read_to_close(&mut fourth)
        .await
        .expect("the fourth is closed");
    assert!(answer.is_empty(), "closed without an answer: {answer:?}");
    // The silent ones time out, and the node serves again.
    for mut s in silent {
        assert!(read_to_close(&mut s).await.is_some());
    }
    fresh_client_works(&n).await;
}

#[tokio::test]
async fn the_limits_are_checked_at_start() {
    for (name, value) in [
        ("HTTP_HEADER_TIMEOUT_MS", "10"),
        ("HTTP_MAX_HEADER_BYTES", "100"),
        ("MAX_PENDING_CONNECTIONS", "0"),
    ] {
        let env: std::collections::HashMap<String, String> = [
            (name, value),
            ("SOCKUDO_DEFAULT_APP_ID", "1"),
            ("SOCKUDO_DEFAULT_APP_KEY", "k"),
            ("SOCKUDO_DEFAULT_APP_SECRET", "s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = sockudo_server::config::NodeSettings::load(&Default::default(), &env);
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains(&name.to_ascii_lowercase()) || e.contains(name),
            "{name}={value}: {e:?}"
        );
    }
}
