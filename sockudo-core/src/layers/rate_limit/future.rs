//! [`ResponseFuture`]: the future [`RateLimit`](super::RateLimit) returns.

/// Response future of [`RateLimit`](super::RateLimit): the inner service's response (with `X-RateLimit-*` headers) when allowed, a 429 (or 503) JSON response when not; the inner
/// service's own error passes through unchanged.
pub type ResponseFuture<T, E> = crate::layers::boxed_future::BoxedResponseFuture<T, E>;
