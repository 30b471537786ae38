//! Idempotent publishes (docs/protocol.md §7, docs/architecture.md §6) as a tower middleware: one key,
//! one effect, cluster-wide, within the TTL.
//!
//! [`IdempotencyLayer`] wraps a service in [`Idempotency`]. A request's key is the top-level
//! `idempotency_key` string of its JSON body or, failing that, the `X-Idempotency-Key` header
//! (the body wins). The body is taken from the [`RequestBody`](crate::layers::RequestBody)
//! extension when [`ApiAuth`](crate::layers::ApiAuth) already read it, else read here (up to
//! a limit) and put back. Keys are scoped per app (the
//! [`AuthenticatedApp`](crate::layers::AuthenticatedApp) extension; without it, one global
//! scope) and remembered in the shared [`Cache`](crate::cache::Cache) for the TTL (120 s by
//! default).
//!
//! A keyed request claims its key with `set_if_absent` of a *pending* record holding the
//! request's [`Fingerprint`] (method, path, query without auth params, canonical body without
//! the key), and only then calls the inner service:
//!
//! | situation | response | inner service called |
//! | --- | --- | --- |
//! | no key, or a `GET`/`HEAD`/`OPTIONS`/`TRACE` request | the inner response, request untouched | yes |
//! | key empty, over 128 characters, not a string, or a non-ASCII header | 400 | no |
//! | body over the limit (when read here) | 413 | no |
//! | claimed | the inner response; it is stored (status, `content-type`/`-encoding`/`-language`, body) | yes, once |
//! | key done with the same fingerprint | the stored response, plus `X-Idempotent-Replayed: true` | no |
//! | key used with a different fingerprint | 409 | no |
//! | key pending (first request running) | waits up to 2 s, polling every 50 ms, for it to finish, then replays; still pending: 503, `Retry-After: 1` | no |
//! | any cache error | 503, `Retry-After: 1` (fail closed: nothing runs without a claim) | no |
//!
//! Which responses are stored: every final response except 5xx and the "not now" 4xx (408,
//! 409, 425, 429). For those, and when the inner service returns an error, the claim is
//! deleted so a retry runs again: a 5xx or an error says the effect most likely did not
//! happen, and replaying a transient failure for two minutes would turn it into a permanent
//! one. A 400 or 413, on the other hand, is the final answer for that payload.
//!
//! Once claimed, the inner call runs on its own task, so it completes and is recorded even if
//! the client disconnects (the usual reason for a retry). Should storing the response fail,
//! the pending record stays until the TTL: retries get 503, never a second effect.
//!
//! Batches: a key on the batch request (header or top-level body field) covers the whole
//! request. Per-item `idempotency_key`s inside `batch[]` are the handler's job, with
//! [`claim_item`] / [`release_item`].
//!
//! Readiness is the inner service's: `poll_ready` delegates, and the instance polled ready is
//! the one called. The inner service's error type passes through unchanged.
//!
//! # Example
//!
//! ```rust
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use sockudo_core::cache::MemoryCache;
//! use sockudo_core::layers::idempotency::IdempotencyLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let published = Arc::new(AtomicUsize::new(0));
//!     let counter = Arc::clone(&published);
//!     let service = ServiceBuilder::new()
//!         .layer(IdempotencyLayer::new(Arc::new(MemoryCache::new())))
//!         .service(service_fn(move |_req: Request<Full<Bytes>>| {
//!             let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!             async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("publish #{n}"))))) }
//!         }));
//!
//!     let publish = |body: &'static str| {
//!         Request::post("/apps/1/events").body(Full::new(Bytes::from_static(body.as_bytes())))
//!     };
//!     let first = service.clone().oneshot(publish(r#"{"name":"e","channel":"c","data":"1","idempotency_key":"k1"}"#)?).await?;
//!     assert_eq!(first.into_body().collect().await?.to_bytes(), "publish #1");
//!
//!     // The retry is answered from the cache: the handler does not run again.
//!     let retry = service.clone().oneshot(publish(r#"{"idempotency_key":"k1","data":"1","channel":"c","name":"e"}"#)?).await?;
//!     assert_eq!(retry.headers()["x-idempotent-replayed"], "true");
//!     assert_eq!(retry.into_body().collect().await?.to_bytes(), "publish #1");
//!
//!     // Same key, different payload: 409.
//!     let other = service.clone().oneshot(publish(r#"{"name":"e","channel":"c","data":"2","idempotency_key":"k1"}"#)?).await?;
//!     assert_eq!(other.status(), StatusCode::CONFLICT);
//!
//!     // No key: untouched.
//!     let plain = service.oneshot(publish(r#"{"name":"e","channel":"c","data":"1"}"#)?).await?;
//!     assert_eq!(plain.into_body().collect().await?.to_bytes(), "publish #2");
//!     assert_eq!(published.load(Ordering::SeqCst), 2);
//!     Ok(())
//! }
//! ```

mod error;
mod fingerprint;
mod future;
mod item;
mod layer;
mod record;
mod service;

#[cfg(test)]
mod tests;

use http::HeaderName;

pub use error::IdempotencyRejection;
pub use fingerprint::{canonical_json, Fingerprint, BODY_KEY_FIELD};
pub use future::ResponseFuture;
pub use item::{claim_item, release_item, validate_item_key, ItemClaim};
pub use layer::{
    IdempotencyLayer, DEFAULT_IN_FLIGHT_WAIT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_POLL_INTERVAL, DEFAULT_TTL,
};
pub use service::Idempotency;

/// The longest key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 128;

/// The request header carrying a key (used when the body has none).
pub const X_IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("x-idempotency-key");

/// Set to `true` on a response replayed from the cache.
pub const X_IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("x-idempotent-replayed");

/// A key is valid when it is non-empty and at most [`MAX_KEY_CHARS`] characters.
fn validate_key(key: &str) -> Result<(), IdempotencyRejection> {
    if key.is_empty() {
        return Err(IdempotencyRejection::InvalidKey("empty"));
    }
    // Byte length bounds the character count from above: skip counting for short keys.
    if key.len() > MAX_KEY_CHARS && key.chars().count() > MAX_KEY_CHARS {
        return Err(IdempotencyRejection::KeyTooLong);
    }
    Ok(())
}
