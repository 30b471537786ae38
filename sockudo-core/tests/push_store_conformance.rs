//! The `PushStore` contract (`sockudo_core::push::conformance`), unchanged, against every
//! implementation: `MemoryPushStore` always, `RedisPushStore` with the `redis` feature (each
//! test starts its own `redis-server` on a free port, killed on drop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use sockudo_core::push::{conformance, MemoryPushStore, PushStore};

macro_rules! checks {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            checks!(@each $make, [devices, subscriptions, status_create_is_set_if_absent,
                status_updates, status_expires, send_markers, dead_letters, apps_isolated]);
        }
    };
    (@each $make:expr, [$($check:ident),*]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[allow(dropping_copy_types)]
            async fn $check() {
                #[allow(unused_variables)]
                let (store, guard) = $make;
                conformance::$check(&store).await;
                drop(guard);
            }
        )*
    };
}

fn memory() -> Arc<dyn PushStore> {
    Arc::new(MemoryPushStore::new())
}

checks!(memory_store, (memory(), ()));

#[cfg(feature = "redis")]
async fn redis() -> (Arc<dyn PushStore>, redis_server::RedisServer) {
    let server = redis_server::RedisServer::start();
    let store = sockudo_core::push::RedisPushStore::connect(server.url(), "t:push:")
        .await
        .unwrap();
    (Arc::new(store), server)
}

#[cfg(feature = "redis")]
checks!(redis_store, redis().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_run_all() {
    conformance::run_all(&memory()).await;
}
