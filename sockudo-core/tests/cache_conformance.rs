//! The `Cache` contract (`sockudo_core::cache::conformance`) against every implementation:
//! `MemoryCache` always, `RedisCache` with the `redis` feature (each test starts its own
//! `redis-server` on a free port).

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use sockudo_core::cache::{conformance, Cache, MemoryCache};

fn memory() -> Arc<dyn Cache> {
    Arc::new(MemoryCache::new())
}

/// One test per check and backend, so a failure names both.
macro_rules! conformance_tests {
    ($backend:ident, $make:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    // `_guard` keeps the backend's server (if any) alive for the whole check.
                    let (cache, _guard) = $make;
                    conformance::$check(&cache).await;
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
                get_set_overwrite,
                ttl_expiry_is_visible,
                set_replaces_ttl,
                set_if_absent_basic,
                set_if_absent_one_winner,
                set_if_absent_after_expiry,
                delete_reports_live_value,
                increment_from_absent,
                increment_concurrent,
                increment_ttl_only_at_creation,
                increment_not_an_integer,
                compare_and_swap_semantics,
                compare_and_swap_one_winner,
                keys_isolated,
            ]
        );
    };
}

all_checks!(memory_cache, (memory(), ()));

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_cache_run_all() {
    conformance::run_all(&memory()).await;
}

#[cfg(feature = "redis")]
mod redis_support {
    use std::sync::Arc;

    use sockudo_core::cache::{Cache, RedisCache, RedisCacheOptions};

    pub use crate::redis_server::{free_port, RedisServer};

    pub async fn redis_cache(server: &RedisServer, options: RedisCacheOptions) -> RedisCache {
        match RedisCache::connect_with(&server.url(), options).await {
            Ok(cache) => cache,
            Err(e) => panic!("cannot connect to the test redis-server: {e}"),
        }
    }

    /// A fresh server and a cache on it; the server lives as long as the returned guard.
    pub async fn fresh() -> (Arc<dyn Cache>, RedisServer) {
        let server = RedisServer::start();
        let cache = redis_cache(&server, RedisCacheOptions::default()).await;
        (Arc::new(cache), server)
    }
}

#[cfg(feature = "redis")]
all_checks!(redis_cache, redis_support::fresh().await);

#[cfg(feature = "redis")]
mod redis_specific {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use sockudo_core::cache::{conformance, Cache, CacheError, RedisCache, RedisCacheOptions};

    use super::redis_support::{free_port, fresh, redis_cache, RedisServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn run_all() {
        let (cache, _server) = fresh().await;
        conformance::run_all(&cache).await;
    }

    #[tokio::test]
    async fn connect_fails_promptly_when_redis_is_down() {
        let port = free_port(); // nothing listens there
        let options = RedisCacheOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let started = Instant::now();
        let r = RedisCache::connect_with(&format!("redis://127.0.0.1:{port}"), options).await;
        assert!(matches!(r, Err(CacheError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "connect took {:?}",
            started.elapsed()
        );
        let r = RedisCache::connect("not a url", "p:").await;
        assert!(matches!(r, Err(CacheError::Unavailable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn keys_carry_the_prefix_and_a_hash_tag() {
        let server = RedisServer::start();
        let cache = RedisCache::connect(&server.url(), "myapp:").await.unwrap();
        assert_eq!(cache.prefix(), "myapp:");
        assert_eq!(cache.redis_key("rl:1"), "myapp:{rl:1}");
        cache
            .set("rl:1", Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        // The raw key is visible to other Redis clients under the documented name.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg("myapp:{rl:1}")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(raw.as_deref(), Some(&b"v"[..]));
        // Another prefix is another namespace.
        let other = RedisCache::connect(&server.url(), RedisCache::DEFAULT_PREFIX)
            .await
            .unwrap();
        assert_eq!(other.get("rl:1").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outage_fails_promptly_and_restart_recovers_without_rebuilding() {
        let mut server = RedisServer::start();
        let port = server.port;
        let timeout = Duration::from_millis(500);
        let cache: Arc<dyn Cache> = Arc::new(
            redis_cache(
                &server,
                RedisCacheOptions {
                    operation_timeout: timeout,
                    ..Default::default()
                },
            )
            .await,
        );
        cache
            .set("k", Bytes::from_static(b"before"), None)
            .await
            .unwrap();
        assert_eq!(
            cache.get("k").await.unwrap(),
            Some(Bytes::from_static(b"before"))
        );

        server.stop();
        // Every operation fails (never a false "absent") and none outlives the timeout by much.
        let bound = timeout + Duration::from_secs(1);
        for _ in 0..2 {
            for (name, fut) in [
                (
                    "get",
                    Box::pin(async { cache.get("k").await.map(|_| ()) })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>,
                ),
                (
                    "set",
                    Box::pin(async { cache.set("k", Bytes::from_static(b"x"), None).await }),
                ),
                (
                    "set_if_absent",
                    Box::pin(async {
                        cache
                            .set_if_absent("k2", Bytes::from_static(b"x"), None)
                            .await
                            .map(|_| ())
                    }),
                ),
                (
                    "increment",
                    Box::pin(async { cache.increment("n", 1, None).await.map(|_| ()) }),
                ),
                (
                    "delete",
                    Box::pin(async { cache.delete("k").await.map(|_| ()) }),
                ),
                ("ping", Box::pin(async { cache.ping().await })),
            ] {
                let started = Instant::now();
                // The outer timeout only keeps a hanging implementation from hanging the test.
                let r = tokio::time::timeout(Duration::from_secs(10), fut).await;
                let elapsed = started.elapsed();
                let r = r.unwrap_or_else(|_| panic!("{name} hung while redis was down"));
                assert!(
                    matches!(r, Err(CacheError::Unavailable(_))),
                    "{name} while redis is down: {r:?}"
                );
                assert!(
                    elapsed < bound,
                    "{name} took {elapsed:?} while redis was down (timeout {timeout:?})"
                );
            }
        }

        // Same port, same cache object: it reconnects by itself.
        let _server = RedisServer::start_on(port);
        let deadline = Instant::now() + Duration::from_secs(15);
        while cache.ping().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the cache did not reconnect after redis restarted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The restarted server is empty (no persistence); everything works again.
        assert_eq!(cache.get("k").await.unwrap(), None);
        cache
            .set("k", Bytes::from_static(b"after"), None)
            .await
            .unwrap();
        assert_eq!(
            cache.get("k").await.unwrap(),
            Some(Bytes::from_static(b"after"))
        );
        assert!(cache
            .set_if_absent("k2", Bytes::from_static(b"x"), None)
            .await
            .unwrap());
        // The increment script was flushed with the server; it is loaded again transparently.
        assert_eq!(
            cache
                .increment("n", 2, Some(Duration::from_secs(5)))
                .await
                .unwrap(),
            2
        );
        assert!(cache.delete("k").await.unwrap());
    }
}
