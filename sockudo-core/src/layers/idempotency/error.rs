//! Why [`Idempotency`](super::Idempotency) answered a request itself.

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::MAX_KEY_CHARS;
use crate::layers::json_error;

/// Why a request was answered by the layer instead of the inner service. Answered with a
/// [`json_error`] body (503s also carry `Retry-After: 1`); never the service's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyRejection {
    /// The key is longer than [`MAX_KEY_CHARS`] characters: 400.
    #[error("idempotency_key is longer than {MAX_KEY_CHARS} characters")]
    KeyTooLong,
    /// The key is empty, not a string, or the header is not visible ASCII: 400.
    #[error("invalid idempotency_key: {0}")]
    InvalidKey(&'static str),
    /// The body is over the layer's limit: 413.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The body could not be read: 400.
    #[error("failed to read request body")]
    BodyRead,
    /// The key was used, within its TTL, for a request with another fingerprint: 409.
    #[error("idempotency_key was already used for a different request")]
    Conflict,
    /// The first request with this key is still running (after waiting for it): 503.
    #[error("a request with this idempotency_key is still in progress; retry later")]
    InFlight,
    /// The shared cache could not answer, so the request was not run (fail closed): 503.
    #[error("idempotency store unavailable; the request was not processed")]
    CacheUnavailable,
    /// The stored record could not be read: 503 (the request was not run).
    #[error("idempotency record is unreadable; the request was not processed")]
    RecordUnreadable,
}

impl IdempotencyRejection {
    /// The HTTP status this rejection is answered with.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::KeyTooLong | Self::InvalidKey(_) | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::InFlight | Self::CacheUnavailable | Self::RecordUnreadable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The JSON error response for this rejection; 503s carry `Retry-After: 1`.
    #[must_use]
    pub fn into_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = json_error(self.status(), &self.to_string());
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (IdempotencyRejection::KeyTooLong, 400),
            (IdempotencyRejection::InvalidKey("empty"), 400),
            (IdempotencyRejection::BodyTooLarge { limit: 1 }, 413),
            (IdempotencyRejection::BodyRead, 400),
            (IdempotencyRejection::Conflict, 409),
            (IdempotencyRejection::InFlight, 503),
            (IdempotencyRejection::CacheUnavailable, 503),
            (IdempotencyRejection::RecordUnreadable, 503),
        ];
        for (rejection, status) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            let response: Response<http_body_util::Full<Bytes>> = rejection.into_response();
            assert_eq!(response.headers().contains_key(RETRY_AFTER), status == 503);
        }
    }
}
