//! RedisServer: start, PING, stop, restart on the same port.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sockudo_testkit::redis::ping;
use sockudo_testkit::RedisServer;

#[tokio::test]
async fn start_ping_stop_restart_same_port() {
    let mut redis = RedisServer::start().await.unwrap();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert!(redis.ping().await, "a started Redis answers PING");

    redis.stop().unwrap();
    assert!(!redis.is_running());
    assert!(!ping(redis.addr()).await, "a stopped Redis does not answer");
    redis.stop().unwrap(); // idempotent

    redis.start_again().await.unwrap();
    assert_eq!(redis.port(), port, "start_again keeps the port");
    assert!(redis.ping().await);

    redis.restart().await.unwrap();
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert!(redis.ping().await);

    let addr = redis.addr();
    drop(redis);
    assert!(!ping(addr).await, "dropping kills the server");
}
