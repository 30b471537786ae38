//! [`BoxedResponseFuture`]: the one future type behind every layer's `ResponseFuture`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

pin_project! {
    /// The response future of every Sockudo layer: each must await a backend (app manager,
    /// shared cache, request body) before the inner call, so the work is one boxed future.
    /// A layer's rejection is a response (`Ok`); only the inner service's own error is `Err`,
    /// passed through unchanged.
    pub struct BoxedResponseFuture<T, E> {
        #[pin]
        inner: BoxFuture<'static, Result<T, E>>,
    }
}

impl<T, E> BoxedResponseFuture<T, E> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<T, E>>) -> Self {
        Self { inner }
    }
}

impl<T, E> Future for BoxedResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<T, E> fmt::Debug for BoxedResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
