//! [`ResponseFuture`]: the future [`Idempotency`](super::Idempotency) returns.

/// Response future of [`Idempotency`](super::Idempotency): the inner service's response for a first request, the stored response for a retry, a 409/503 JSON response otherwise; the inner
/// service's own error passes through unchanged.
pub type ResponseFuture<T, E> = crate::layers::boxed_future::BoxedResponseFuture<T, E>;
