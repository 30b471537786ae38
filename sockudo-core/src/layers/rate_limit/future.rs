//! [`ResponseFuture`]: the future [`RateLimit`](super::RateLimit) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    ///
    /// Resolves to the inner service's response (with the `X-RateLimit-*` headers added) when
    /// the request is allowed, to a 429 (or 503) JSON response when it is not, and to the inner
    /// service's error, unchanged, only when the inner service fails. Boxed, because deciding
    /// awaits the shared cache before the inner call.
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
