//! Tower middleware for Sockudo's HTTP surface.
//!
//! Every layer here is plain [`tower_layer::Layer`] + [`tower_service::Service`] over
//! [`http::Request`] / [`http::Response`], with no dependency on axum or hyper, so the server
//! mounts them in its axum router and embedders can mount them in any tower stack.
//!
//! Each layer lives in its own module, laid out like tower's own middleware:
//! `mod.rs` (docs, re-exports), `layer.rs` (the [`Layer`](tower_layer::Layer) and its builder),
//! `service.rs` (the [`Service`](tower_service::Service)), `future.rs` (its named response
//! future) and `error.rs` (why a request was rejected).
//!
//! - [`api_auth`]: authenticates Pusher HTTP API requests (the signed `auth_*` query,
//!   docs/protocol.md §5), resolves the app, and hands the handler the app and the already-read body.
//! - [`rate_limit`]: cluster-wide GCRA rate limiting over the shared cache, per app and route
//!   class, per client IP, or per any key; 429 with `Retry-After` and `X-RateLimit-*` headers.
//! - [`idempotency`]: `idempotency_key` / `X-Idempotency-Key` handling for publishes
//!   (docs/protocol.md §7): one effect per key cluster-wide, replays, 409 on a different payload,
//!   fail closed when the cache is down.
//!
//! In a stack, order them `api_auth` (outermost) → `idempotency` → `rate_limit` → handler: the
//! inner two read the [`AuthenticatedApp`] extension, and a replayed retry should not spend
//! rate budget.
//!
//! Layers answer a rejected request themselves, with [`json_error`], rather than failing the
//! service: rejections are responses, and the inner service's error type passes through as is.

pub mod api_auth;
pub mod boxed_future;
pub mod idempotency;
pub mod rate_limit;

#[cfg(test)]
pub(crate) mod test_support;

pub use api_auth::{ApiAuth, ApiAuthLayer, ApiAuthRejection, AuthenticatedApp, RequestBody};
pub use idempotency::{Idempotency, IdempotencyLayer, IdempotencyRejection};
pub use rate_limit::{FailMode, KeyBy, PeerAddr, Quota, RateLimit, RateLimitLayer, RateLimiter};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

/// The JSON error response every Sockudo layer and API handler answers with:
/// body `{"error":"<message>","status":<code>}`, `content-type: application/json`.
///
/// `message` is JSON-escaped, so any text is safe to pass. The body type only needs
/// `From<Bytes>`, which `axum::body::Body` and `http_body_util::Full<Bytes>` both implement.
///
/// ```rust
/// use bytes::Bytes;
/// use http::StatusCode;
/// use http_body_util::Full;
/// use sockudo_core::layers::json_error;
///
/// let response = json_error::<Full<Bytes>>(StatusCode::FORBIDDEN, "app is disabled");
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// ```
#[must_use]
pub fn json_error<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    // `Value`'s Display is infallible JSON, unlike `serde_json::to_string`'s `Result`.
    let body = format!(
        "{{\"error\":{},\"status\":{}}}",
        serde_json::Value::String(message.to_owned()),
        status.as_u16()
    );
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn json_error_shape_and_escaping() {
        let response = json_error::<Full<Bytes>>(StatusCode::UNAUTHORIZED, "bad \"sig\"\n");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": "bad \"sig\"\n", "status": 401})
        );
    }
}
