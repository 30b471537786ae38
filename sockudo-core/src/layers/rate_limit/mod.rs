//! Cluster-wide rate limiting (GCRA over the shared [`Cache`](crate::cache::Cache)) as a tower
//! middleware.
//!
//! [`RateLimitLayer`] wraps a service in [`RateLimit`], which maps each request to a budget key
//! ([`KeyBy`]: per app and route class, per client IP, or any function of the request head),
//! asks the [`RateLimiter`] whether that key may proceed, and then:
//!
//! | outcome | response |
//! | --- | --- |
//! | allowed | the inner service's response, plus `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` |
//! | budget spent | 429 JSON `{"error":"rate limit exceeded; retry in N s","status":429}`, `Retry-After: N` (seconds, rounded up) and the same three headers; the inner service is not called |
//! | no key for the request | the inner service's response, untouched |
//! | cache error, [`FailMode::Open`] (default) | the inner service's response, without headers; a `warn` is logged |
//! | cache error, [`FailMode::Closed`] | 503 JSON, `Retry-After: 1`; the inner service is not called |
//!
//! `X-RateLimit-Limit` is the burst, `X-RateLimit-Remaining` how many more requests would pass
//! right now, and `X-RateLimit-Reset` the seconds until the whole burst is available again
//! (a delta, not an epoch time, so clients need no synchronised clock).
//!
//! Every node stores a key's *theoretical arrival time* in the shared cache as a decimal string
//! of unix milliseconds and moves it with [`compare_and_swap`](crate::cache::Cache::compare_and_swap),
//! so all nodes draw on one budget; keys carry a TTL of the quota's burst window and vanish
//! when idle. The decision itself is the pure function [`gcra_decide`]. The [`RateLimiter`]
//! handle is usable on its own (the server limits WebSocket upgrades per IP with it).
//!
//! Readiness is the inner service's: `poll_ready` delegates, and the instance polled ready is
//! the one called. The inner service's error type passes through unchanged.
//!
//! # Example
//!
//! ```rust
//! use std::convert::Infallible;
//! use std::num::NonZeroU32;
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use sockudo_core::cache::MemoryCache;
//! use sockudo_core::layers::rate_limit::{KeyBy, Quota, RateLimitLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     // 1 request per second per `x-tenant`, bursts of 2.
//!     let quota = Quota::per_second(NonZeroU32::MIN).allow_burst(NonZeroU32::MIN.saturating_add(1));
//!     let by_tenant = KeyBy::Custom(Arc::new(|head: &http::request::Parts| {
//!         head.headers.get("x-tenant")?.to_str().ok().map(|t| format!("tenant:{t}"))
//!     }));
//!     let service = ServiceBuilder::new()
//!         .layer(RateLimitLayer::new(Arc::new(MemoryCache::new()), quota).key_by(by_tenant))
//!         .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!             Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
//!         }));
//!
//!     let request = || Request::get("/").header("x-tenant", "acme").body(Full::new(Bytes::new()));
//!     let first = service.clone().oneshot(request()?).await?;
//!     assert_eq!(first.status(), StatusCode::OK);
//!     assert_eq!(first.headers()["x-ratelimit-limit"], "2");
//!     assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
//!     let second = service.clone().oneshot(request()?).await?;
//!     assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
//!
//!     let third = service.clone().oneshot(request()?).await?;
//!     assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//!     assert_eq!(third.headers()["retry-after"], "1");
//!     assert_eq!(third.headers()["content-type"], "application/json");
//!
//!     // No tenant, no key: not limited.
//!     let anonymous = service.oneshot(Request::get("/").body(Full::new(Bytes::new()))?).await?;
//!     assert_eq!(anonymous.status(), StatusCode::OK);
//!     assert!(anonymous.headers().get("x-ratelimit-limit").is_none());
//!     Ok(())
//! }
//! ```

mod error;
mod future;
mod gcra;
mod key;
mod layer;
mod service;

#[cfg(test)]
mod tests;

pub use error::{
    insert_headers, RateLimitRejection, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub use future::ResponseFuture;
pub use gcra::{
    gcra_decide, Decision, Quota, RateLimiter, DEFAULT_KEY_PREFIX, DEFAULT_MAX_CAS_RETRIES,
};
pub use key::{route_class, KeyBy, KeyFn, PeerAddr};
pub use layer::{FailMode, RateLimitLayer};
pub use service::RateLimit;
