//! Why [`ApiAuth`](super::ApiAuth) turned a request away.

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::auth::ApiAuthError;
use crate::layers::json_error;

/// Why a request was rejected before reaching the inner service.
///
/// Rejections are answered by the layer itself with [`json_error`] (see
/// [`into_response`](Self::into_response)); they never surface as the service's error, so the
/// inner service's error type passes through unchanged. The type is public so other code (an
/// access log, a metrics hook, the server's own handlers) can reuse the same status mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiAuthRejection {
    /// The `auth_*` query is missing, malformed, stale, or its signature or body digest does
    /// not match: 400 or 401, per [`ApiAuthError::http_status`].
    #[error(transparent)]
    Auth(#[from] ApiAuthError),
    /// No app has the request's `auth_key`: 401.
    #[error("unknown auth_key")]
    UnknownKey,
    /// The path names an app (`/apps/{id}/…`) other than the one `auth_key` belongs to: 401.
    #[error("app id does not match auth_key")]
    AppIdMismatch,
    /// The app exists but is disabled: 403.
    #[error("app is disabled")]
    AppDisabled,
    /// The body (by `Content-Length`, size hint, or as read) is over the configured limit: 413.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The body could not be read (the client went away, bad chunking, ...): 400.
    #[error("failed to read request body")]
    BodyRead,
    /// The [`AppManager`](crate::app::AppManager) could not answer: 503. Never treated as
    /// "no such app" or "allowed".
    #[error("app manager unavailable")]
    AppManagerUnavailable,
}

impl ApiAuthRejection {
    /// The HTTP status this rejection is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Auth(error) => {
                StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            Self::UnknownKey | Self::AppIdMismatch => StatusCode::UNAUTHORIZED,
            Self::AppDisabled => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::AppManagerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON error response for this rejection: [`status`](Self::status) and the
    /// [`Display`](std::fmt::Display) text as `error`.
    #[must_use]
    pub fn into_response<B: From<Bytes>>(&self) -> Response<B> {
        json_error(self.status(), &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (
                ApiAuthRejection::Auth(ApiAuthError::MissingParam("auth_key")),
                400,
            ),
            (ApiAuthRejection::Auth(ApiAuthError::InvalidSignature), 401),
            (ApiAuthRejection::UnknownKey, 401),
            (ApiAuthRejection::AppIdMismatch, 401),
            (ApiAuthRejection::AppDisabled, 403),
            (ApiAuthRejection::BodyTooLarge { limit: 1 }, 413),
            (ApiAuthRejection::BodyRead, 400),
            (ApiAuthRejection::AppManagerUnavailable, 503),
        ];
        for (rejection, status) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
        }
        assert_eq!(
            ApiAuthRejection::from(ApiAuthError::InvalidSignature).to_string(),
            "invalid auth_signature"
        );
    }
}
