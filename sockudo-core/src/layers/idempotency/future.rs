//! [`ResponseFuture`]: the future [`Idempotency`](super::Idempotency) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    ///
    /// Resolves to the inner service's response, to the stored response of the first request
    /// with the same key (a replay), or to a 400/409/413/503 JSON response when the layer
    /// answers itself; to the inner service's error, unchanged, only when the inner service
    /// fails. Boxed, because claiming awaits the shared cache before the inner call.
    pub struct ResponseFuture<T, E> {
        #[pin]
        inner: BoxFuture<'static, Result<T, E>>,
    }
}

impl<T, E> ResponseFuture<T, E> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<T, E>>) -> Self {
        Self { inner }
    }
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
