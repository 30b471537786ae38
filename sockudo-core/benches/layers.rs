//! Per-request overhead of the HTTP API layers over an inner service that answers 200 at
//! once, with the in-memory cache and, with feature `redis`, with the shared `RedisCache`
//! on a `redis-server` child process this bench starts on a free loopback port (skipped, with
//! a message, when `redis-server` is not on PATH).
//!
//! Run: `cargo bench -p sockudo-core --features redis --bench layers` (without
//! `--features redis` only the in-memory variants run).

// `criterion_group!` generates a public function it cannot document.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use sockudo_core::app::{App, StaticAppManager};
use sockudo_core::auth::sign_api_request;
use sockudo_core::cache::MemoryCache;
use sockudo_core::layers::idempotency::IdempotencyLayer;
use sockudo_core::layers::rate_limit::{Quota, RateLimitLayer};
use sockudo_core::layers::{ApiAuthLayer, AuthenticatedApp, RequestBody};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

const EVENT: &[u8] = br#"{"name":"greet","channel":"news","data":"{\"hello\":\"world\"}"}"#;

fn ok_service(
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone + Send + 'static
{
    service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    })
}

fn app() -> Arc<App> {
    Arc::new(App::new("1", "app-key", "app-secret"))
}

/// A request as it looks behind `ApiAuth`: app and body extensions set.
fn authenticated(uri: &'static str, body: Bytes) -> Req {
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_static(uri);
    req.extensions_mut().insert(AuthenticatedApp(app()));
    req.extensions_mut().insert(RequestBody(body));
    req
}

fn run<S>(rt: &Runtime, service: &S, make: impl Fn() -> Req)
where
    S: Service<Req, Response = Res, Error = Infallible> + Clone,
{
    rt.block_on(async {
        let _ = std::hint::black_box(service.clone().oneshot(make()).await);
    });
}

fn bench_layers(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot build a tokio runtime");
        return;
    };
    let mut group = c.benchmark_group("layers");

    let baseline = ok_service();
    group.bench_function("baseline (no layer)", |b| {
        b.iter(|| {
            run(&rt, &baseline, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });

    // api_auth: query parse, app lookup, body read, MD5 + HMAC-SHA256 verify.
    let apps = Arc::new(StaticAppManager::new([App::new(
        "1",
        "app-key",
        "app-secret",
    )]));
    let auth = ApiAuthLayer::new(apps).layer(ok_service());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let query = sign_api_request(
        "app-key",
        "app-secret",
        "POST",
        "/apps/1/events",
        &[],
        EVENT,
        now,
    );
    let uri: Uri = match format!("/apps/1/events?{query}").parse() {
        Ok(uri) => uri,
        Err(_) => return,
    };
    group.bench_function("api_auth", |b| {
        b.iter(|| {
            run(&rt, &auth, || {
                let mut req = Request::new(Full::new(Bytes::from_static(EVENT)));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = uri.clone();
                req
            });
        });
    });

    // rate_limit: a quota never reached, so every request is a read + compare-and-swap.
    let unlimited = Quota::per_second(NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MAX);
    let rate = RateLimitLayer::new(Arc::new(MemoryCache::new()), unlimited).layer(ok_service());
    group.bench_function("rate_limit (allowed)", |b| {
        b.iter(|| {
            run(&rt, &rate, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });
    // And the rejecting path: one read, no write, a 429 built.
    let tight = Quota::per_minute(NonZeroU32::MIN);
    let limited = RateLimitLayer::new(Arc::new(MemoryCache::new()), tight).layer(ok_service());
    group.bench_function("rate_limit (rejected)", |b| {
        b.iter(|| {
            run(&rt, &limited, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });

    // idempotency without a key: the pusher SDK path (one substring scan).
    let idempotency = IdempotencyLayer::new(Arc::new(MemoryCache::new())).layer(ok_service());
    group.bench_function("idempotency (no key)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });
    // A fresh key each time: parse, fingerprint, claim, run, store.
    let counter = AtomicU64::new(0);
    group.bench_function("idempotency (new key)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"name":"greet","channel":"news","data":"hi","idempotency_key":"k-{n}"}}"#
                );
                authenticated("/apps/1/events", Bytes::from(body))
            });
        });
    });
    // The same key again: parse, fingerprint, read, replay.
    let replay_body = Bytes::from_static(
        br#"{"name":"greet","channel":"news","data":"hi","idempotency_key":"same"}"#,
    );
    run(&rt, &idempotency, || {
        authenticated("/apps/1/events", replay_body.clone())
    });
    group.bench_function("idempotency (replay)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                authenticated("/apps/1/events", replay_body.clone())
            })
        });
    });
    group.finish();
}

/// The Redis variants: the same layers on a `RedisCache` (one round trip or script per
/// request) instead of the in-memory cache.
#[cfg(feature = "redis")]
fn bench_layers_redis(c: &mut Criterion) {
    use sockudo_core::cache::{Cache, RedisCache};

    let Some(server) = redis_child::RedisChild::start() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot build a tokio runtime");
        return;
    };
    let url = server.url();
    let connect = |prefix: &'static str| {
        rt.block_on(RedisCache::connect(&url, prefix))
            .map(|c| Arc::new(c) as Arc<dyn Cache>)
    };
    let (Ok(rate_cache), Ok(reject_cache), Ok(idem_cache)) = (
        connect("bench-rl:"),
        connect("bench-rl-reject:"),
        connect("bench-idem:"),
    ) else {
        eprintln!("layers (redis): cannot connect to {url}; skipping the Redis variants");
        return;
    };
    let mut group = c.benchmark_group("layers (redis)");

    let unlimited = Quota::per_second(NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MAX);
    let rate = RateLimitLayer::new(rate_cache, unlimited).layer(ok_service());
    group.bench_function("rate_limit (allowed)", |b| {
        b.iter(|| {
            run(&rt, &rate, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });
    let tight = Quota::per_minute(NonZeroU32::MIN);
    let limited = RateLimitLayer::new(reject_cache, tight).layer(ok_service());
    group.bench_function("rate_limit (rejected)", |b| {
        b.iter(|| {
            run(&rt, &limited, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });

    let idempotency = IdempotencyLayer::new(idem_cache).layer(ok_service());
    group.bench_function("idempotency (no key)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                authenticated("/apps/1/events", Bytes::from_static(EVENT))
            })
        });
    });
    let counter = AtomicU64::new(0);
    group.bench_function("idempotency (new key)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"name":"greet","channel":"news","data":"hi","idempotency_key":"k-{n}"}}"#
                );
                authenticated("/apps/1/events", Bytes::from(body))
            });
        });
    });
    let replay_body = Bytes::from_static(
        br#"{"name":"greet","channel":"news","data":"hi","idempotency_key":"same"}"#,
    );
    run(&rt, &idempotency, || {
        authenticated("/apps/1/events", replay_body.clone())
    });
    group.bench_function("idempotency (replay)", |b| {
        b.iter(|| {
            run(&rt, &idempotency, || {
                authenticated("/apps/1/events", replay_body.clone())
            })
        });
    });
    group.finish();
    drop(server);
}

#[cfg(not(feature = "redis"))]
fn bench_layers_redis(_c: &mut Criterion) {
    eprintln!(
        "layers (redis): skipped, sockudo-core was built without feature `redis` \
         (run with `--features redis`)"
    );
}

/// A throwaway `redis-server` (no persistence) on a free loopback port, killed on drop.
#[cfg(feature = "redis")]
mod redis_child {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisChild {
        child: Child,
        port: u16,
    }

    impl RedisChild {
        /// Start it, or print why not and return `None`.
        pub fn start() -> Option<RedisChild> {
            let on_path = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|d| d.join("redis-server").is_file())
            });
            if !on_path {
                eprintln!(
                    "layers (redis): redis-server is not on PATH; skipping the Redis variants"
                );
                return None;
            }
            let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(a) => a.port(),
                Err(e) => {
                    eprintln!("layers (redis): no free port ({e}); skipping");
                    return None;
                }
            };
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("layers (redis): cannot start redis-server ({e}); skipping");
                    return None;
                }
            };
            let server = RedisChild { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if server.ping() {
                    return Some(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("layers (redis): redis-server on {port} did not answer PING; skipping");
            None
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn ping(&self) -> bool {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 5];
            s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG"
        }
    }

    impl Drop for RedisChild {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

criterion_group!(benches, bench_layers, bench_layers_redis);
criterion_main!(benches);
