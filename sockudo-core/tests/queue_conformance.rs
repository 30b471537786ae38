//! The `Queue` contract (`sockudo_core::queue::conformance`) against every implementation:
//! `MemoryQueue` always, `RedisQueue` with the `redis` feature (each test starts its own
//! `redis-server` on a free port, killed on drop).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use sockudo_core::queue::{conformance, MemoryQueue, Queue};

fn memory() -> Arc<dyn Queue> {
    Arc::new(MemoryQueue::new())
}

/// One test per check and backend, so a failure names both.
macro_rules! conformance_tests {
    ($backend:ident, $make:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[allow(dropping_copy_types)]
                async fn $check() {
                    #[allow(unused_variables)]
                    let (queue, guard) = $make;
                    conformance::$check(&queue).await;
                    drop(guard);
                }
            )*
        }
    };
}

macro_rules! all_checks {
    ($backend:ident, $make:expr) => {
        conformance_tests!(
            $backend,
            $make,
            [
                ping_answers,
                enqueue_claim_ack,
                claim_respects_max,
                delay_is_respected,
                leased_job_is_invisible,
                expired_lease_is_redelivered,
                nack_retries_after_delay,
                nack_dead_letters_at_max_attempts,
                nack_zero_max_dead_letters_at_once,
                ack_and_nack_unknown,
                stats_depth_and_oldest_age,
                concurrent_claims_never_share_a_job,
                queues_isolated,
                payload_bytes_round_trip,
            ]
        );
    };
}

all_checks!(memory_queue, (memory(), ()));

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_queue_run_all() {
    conformance::run_all(&memory()).await;
}

#[tokio::test]
async fn memory_dead_letter_store_is_bounded() {
    use bytes::Bytes;
    use std::time::Duration;
    let q = MemoryQueue::with_dead_letter_cap(2);
    for i in 0..3 {
        let id = q
            .enqueue("q", Bytes::from(vec![i]), Duration::ZERO)
            .await
            .unwrap();
        q.claim("q", "c", Duration::from_secs(60), 1).await.unwrap();
        q.nack("q", &id, Duration::ZERO, 1).await.unwrap();
    }
    let dead = q.dead_letters("q", 10).await.unwrap();
    assert_eq!(
        dead.iter().map(|j| j.payload[0]).collect::<Vec<_>>(),
        vec![2, 1],
        "oldest dropped first"
    );
}

#[cfg(feature = "redis")]
mod redis_support {
    use std::sync::Arc;

    use sockudo_core::queue::{Queue, RedisQueue, RedisQueueOptions};

    pub use crate::redis_server::{free_port, RedisServer};

    pub async fn fresh() -> (Arc<dyn Queue>, RedisServer) {
        let server = RedisServer::start();
        let q = RedisQueue::connect_with(&server.url(), RedisQueueOptions::default())
            .await
            .unwrap();
        (Arc::new(q), server)
    }
}

#[cfg(feature = "redis")]
all_checks!(redis_queue, redis_support::fresh().await);

#[cfg(feature = "redis")]
mod redis_specific {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use sockudo_core::queue::{conformance, Queue, QueueError, RedisQueue, RedisQueueOptions};

    use super::redis_support::{free_port, fresh, RedisServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn run_all() {
        let (q, _server) = fresh().await;
        conformance::run_all(&q).await;
    }

    #[tokio::test]
    async fn connect_fails_promptly_when_redis_is_down() {
        let port = free_port();
        let options = RedisQueueOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let started = Instant::now();
        let r = RedisQueue::connect_with(&format!("redis://127.0.0.1:{port}"), options).await;
        assert!(matches!(r, Err(QueueError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Two independent connections (two "nodes"): work claimed by one that disappears without
    /// acking is redelivered to the other after the lease, and survives the first's connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_survive_a_dead_consumer_and_are_shared_between_connections() {
        let server = RedisServer::start();
        let a = RedisQueue::connect(&server.url()).await.unwrap();
        let b = RedisQueue::connect(&server.url()).await.unwrap();
        let id = a
            .enqueue("hooks", Bytes::from_static(b"job"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            a.claim("hooks", "node-a", Duration::from_millis(200), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        drop(a); // node-a dies holding the lease
        assert!(b
            .claim("hooks", "node-b", Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let jobs = b
            .claim("hooks", "node-b", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].id.clone(), jobs[0].attempts), (id.clone(), 2));
        assert!(b.ack("hooks", &id).await.unwrap());
    }

    #[tokio::test]
    async fn dead_letter_store_is_bounded_and_keys_are_documented() {
        let server = RedisServer::start();
        let q = RedisQueue::connect_with(
            &server.url(),
            RedisQueueOptions {
                dead_letter_cap: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for i in 0..3u8 {
            let id = q
                .enqueue("q", Bytes::from(vec![i]), Duration::ZERO)
                .await
                .unwrap();
            q.claim("q", "c", Duration::from_secs(60), 1).await.unwrap();
            q.nack("q", &id, Duration::ZERO, 1).await.unwrap();
        }
        let dead = q.dead_letters("q", 10).await.unwrap();
        assert_eq!(
            dead.iter().map(|j| j.payload[0]).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(q.redis_key("q", "ready"), "sockudo:queue:{q}:ready");
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let n: i64 = redis::cmd("HLEN")
            .arg("sockudo:queue:{q}:dead:jobs")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 2, "evicted dead letters take their data with them");
    }

    #[tokio::test]
    async fn errors_when_redis_goes_away() {
        let mut server = Some(RedisServer::start());
        let url = server.as_ref().map(RedisServer::url).unwrap();
        let q = RedisQueue::connect_with(
            &url,
            RedisQueueOptions {
                operation_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        server.take();
        let started = Instant::now();
        let r = q.enqueue("q", Bytes::new(), Duration::ZERO).await;
        assert!(matches!(r, Err(QueueError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
