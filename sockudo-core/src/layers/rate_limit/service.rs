//! [`RateLimit`]: the [`Service`] that checks each request's budget before calling the inner one.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::error::insert_headers;
use super::layer::Shared;
use super::{FailMode, KeyBy, RateLimitLayer, RateLimitRejection, ResponseFuture};

/// Middleware that rate-limits requests; see the [module docs](super). Built by
/// [`RateLimitLayer`].
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) const fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Wrap `inner` with the settings of `layer` (same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &RateLimitLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    /// The wrapped service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<RB>, S::Error>;

    /// Ready exactly when the inner service is: backpressure passes straight through.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Call the instance that was polled ready; keep a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let key = self.shared.key_by.key(&parts);
        let req = Request::from_parts(parts, body);
        let Some(key) = key else {
            if matches!(self.shared.key_by, KeyBy::ClientIp { .. }) {
                tracing::error!(
                    "rate limit by client IP without a client address: insert PeerAddr for \
                     every request (rejecting rather than serving unlimited)"
                );
                let rejected = RateLimitRejection::NoClientAddress.into_response();
                return ResponseFuture::new(Box::pin(async move { Ok(rejected) }));
            }
            return ResponseFuture::new(Box::pin(inner.call(req)));
        };
        let shared = Arc::clone(&self.shared);
        ResponseFuture::new(Box::pin(async move {
            match shared.limiter.check(&key).await {
                Ok(decision) if decision.allowed => {
                    let mut response = inner.call(req).await?;
                    insert_headers(response.headers_mut(), &decision);
                    Ok(response)
                }
                Ok(decision) => {
                    tracing::debug!(%key, retry_after_ms = decision.retry_after_ms, "rate limited");
                    Ok(RateLimitRejection::Limited(decision).into_response())
                }
                Err(error) => match shared.fail_mode {
                    FailMode::Open => {
                        tracing::warn!(%error, %key, "rate limiter cache failed; letting the request through");
                        inner.call(req).await
                    }
                    FailMode::Closed => {
                        tracing::warn!(%error, %key, "rate limiter cache failed; rejecting the request");
                        Ok(RateLimitRejection::CacheUnavailable.into_response())
                    }
                },
            }
        }))
    }
}
