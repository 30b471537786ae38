//! [`RateLimitLayer`]: the [`Layer`] that wraps services in [`RateLimit`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::{KeyBy, Quota, RateLimit, RateLimiter};
use crate::cache::Cache;

/// What the layer does when the shared cache cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Let the request through (without rate-limit headers) and log a `warn`. The default:
    /// a rate limit protects capacity, not correctness, so a cache outage should not take the
    /// whole API down with it; the requests still pass authentication, and idempotency (which
    /// does protect correctness) fails closed on its own.
    #[default]
    Open,
    /// Answer 503 with `Retry-After: 1` without calling the inner service.
    Closed,
}

/// Shared by the layer and every service it builds: one `Arc` clone per request.
pub(crate) struct Shared {
    pub(crate) limiter: RateLimiter,
    pub(crate) key_by: KeyBy,
    pub(crate) fail_mode: FailMode,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limiter", &self.limiter)
            .field("key_by", &self.key_by)
            .field("fail_mode", &self.fail_mode)
            .finish()
    }
}

/// A [`Layer`] that rate-limits requests with GCRA over the shared cache; see the
/// [module docs](super).
///
/// ```rust
/// use std::num::NonZeroU32;
/// use std::sync::Arc;
/// use sockudo_core::cache::MemoryCache;
/// use sockudo_core::layers::rate_limit::{FailMode, KeyBy, Quota, RateLimitLayer};
///
/// let quota = Quota::per_second(NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN));
/// let layer = RateLimitLayer::new(Arc::new(MemoryCache::new()), quota)
///     .key_by(KeyBy::ClientIp { trusted_proxy_hops: 1 })
///     .fail_mode(FailMode::Closed);
/// assert_eq!(layer.get_fail_mode(), FailMode::Closed);
/// assert_eq!(layer.limiter().quota().burst(), 50);
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    key_by: KeyBy,
    fail_mode: FailMode,
}

impl RateLimitLayer {
    /// Limit to `quota` per app and route class ([`KeyBy::AppAndRoute`]) over `cache`,
    /// failing open.
    #[must_use]
    pub fn new(cache: Arc<dyn Cache>, quota: Quota) -> Self {
        Self::from_limiter(RateLimiter::new(cache, quota))
    }

    /// A layer around an existing [`RateLimiter`] (its quota, prefix, clock and retries).
    #[must_use]
    pub fn from_limiter(limiter: RateLimiter) -> Self {
        Self {
            limiter,
            key_by: KeyBy::AppAndRoute,
            fail_mode: FailMode::Open,
        }
    }

    /// How requests map to budgets (default [`KeyBy::AppAndRoute`]).
    #[must_use]
    pub fn key_by(mut self, key_by: KeyBy) -> Self {
        self.key_by = key_by;
        self
    }

    /// What to do when the cache fails (default [`FailMode::Open`]).
    #[must_use]
    pub fn fail_mode(mut self, fail_mode: FailMode) -> Self {
        self.fail_mode = fail_mode;
        self
    }

    /// The configured failure mode.
    #[must_use]
    pub const fn get_fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// The configured key strategy.
    #[must_use]
    pub const fn get_key_by(&self) -> &KeyBy {
        &self.key_by
    }

    /// The limiter the layer checks.
    #[must_use]
    pub const fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    fn shared(&self) -> Arc<Shared> {
        Arc::new(Shared {
            limiter: self.limiter.clone(),
            key_by: self.key_by.clone(),
            fail_mode: self.fail_mode,
        })
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("key_by", &self.key_by)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, self.shared())
    }
}
