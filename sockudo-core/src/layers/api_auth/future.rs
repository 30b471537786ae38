//! [`ResponseFuture`]: the future [`ApiAuth`](super::ApiAuth) returns.

/// Response future of [`ApiAuth`](super::ApiAuth): the inner service's response when the request authenticates, a JSON error response when it does not; the inner
/// service's own error passes through unchanged.
pub type ResponseFuture<T, E> = crate::layers::boxed_future::BoxedResponseFuture<T, E>;
