//! Why [`RateLimit`](super::RateLimit) turned a request away, and the rate-limit headers.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use super::Decision;
use crate::layers::json_error;

/// `X-RateLimit-Limit`: the burst allowance.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests still allowed right now.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds (rounded up) until the full burst is available again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Why a request was rejected before reaching the inner service. Answered by the layer
/// with a [`json_error`] body; never the service's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitRejection {
    /// The key's budget is spent: 429 with `Retry-After` and the `X-RateLimit-*` headers.
    #[error("rate limit exceeded; retry in {} s", .0.retry_after_secs())]
    Limited(Decision),
    /// The cache could not answer and the layer fails closed
    /// ([`FailMode::Closed`](super::FailMode::Closed)): 503 with `Retry-After: 1`.
    #[error("rate limiter unavailable")]
    CacheUnavailable,
    /// [`KeyBy::ClientIp`](super::KeyBy::ClientIp) found no client address (no
    /// [`PeerAddr`](super::PeerAddr) extension and no usable `X-Forwarded-For`): the stack is
    /// misconfigured, and letting the request through would silently disable the limit.
    /// 500.
    #[error("rate limiter cannot tell the client address (PeerAddr missing)")]
    NoClientAddress,
}

impl RateLimitRejection {
    /// The HTTP status this rejection is answered with.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::CacheUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoClientAddress => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON error response, with its headers.
    #[must_use]
    pub fn into_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = json_error(self.status(), &self.to_string());
        let headers = response.headers_mut();
        match self {
            Self::Limited(decision) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(decision.retry_after_secs()));
                insert_headers(headers, decision);
            }
            Self::CacheUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::NoClientAddress => {}
        }
        response
    }
}

/// Set `X-RateLimit-Limit`, `-Remaining` and `-Reset` from `decision`.
pub fn insert_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(decision.reset_after_secs()),
    );
}
