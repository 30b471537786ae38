//! [`IdempotencyLayer`]: the [`Layer`] that wraps services in [`Idempotency`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::Idempotency;
use crate::cache::Cache;
use crate::layers::api_auth::DEFAULT_MAX_BODY_BYTES;

/// Default [`IdempotencyLayer::ttl`]: 120 s (docs/protocol.md §7).
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
/// Default [`IdempotencyLayer::in_flight_wait`]: 2 s.
pub const DEFAULT_IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
/// Default [`IdempotencyLayer::pending_lease`]: 10 s.
pub const DEFAULT_PENDING_LEASE: Duration = Duration::from_secs(10);
/// Default [`IdempotencyLayer::poll_interval`]: 50 ms.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Default largest keyed response read for storage.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default prefix of request records.
pub const DEFAULT_KEY_PREFIX: &str = "sockudo:idem:";

/// Shared by the layer and every service it builds.
pub(crate) struct Shared {
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) ttl: Duration,
    pub(crate) pending_lease: Duration,
    pub(crate) in_flight_wait: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) key_prefix: Arc<str>,
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            ttl: self.ttl,
            pending_lease: self.pending_lease,
            in_flight_wait: self.in_flight_wait,
            poll_interval: self.poll_interval,
            max_body_bytes: self.max_body_bytes,
            max_response_bytes: self.max_response_bytes,
            key_prefix: Arc::clone(&self.key_prefix),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("ttl", &self.ttl)
            .field("pending_lease", &self.pending_lease)
            .field("in_flight_wait", &self.in_flight_wait)
            .field("poll_interval", &self.poll_interval)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// A [`Layer`] that makes keyed requests take effect once per key, cluster-wide; see the
/// [module docs](super).
///
/// ```rust
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sockudo_core::cache::MemoryCache;
/// use sockudo_core::layers::idempotency::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::new(Arc::new(MemoryCache::new()))
///     .ttl(Duration::from_secs(300))
///     .in_flight_wait(Duration::from_secs(1));
/// assert_eq!(layer.get_ttl(), Duration::from_secs(300));
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    shared: Shared,
}

impl IdempotencyLayer {
    /// A layer over `cache` with a TTL of 120 s, a 2 s wait (polling every 50 ms) for an
    /// in-flight first request, a 1 MiB body limit when it reads the body itself, and a
    /// 1 MiB limit on the keyed responses it reads to store.
    #[must_use]
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self {
            shared: Shared {
                cache,
                ttl: DEFAULT_TTL,
                pending_lease: DEFAULT_PENDING_LEASE,
                in_flight_wait: DEFAULT_IN_FLIGHT_WAIT,
                poll_interval: DEFAULT_POLL_INTERVAL,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                key_prefix: Arc::from(DEFAULT_KEY_PREFIX),
            },
        }
    }

    /// How long a key is remembered (its claim and its stored response).
    #[must_use]
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.shared.ttl = ttl;
        self
    }

    /// How long the claim of a request still in flight is kept (at most the TTL). A request
    /// whose node died mid-way holds its key only this long: retries then run it again
    /// instead of being told 503 for the whole TTL. A request that runs longer than the lease
    /// may see a retry run concurrently, so the inner service must tolerate a repeat (the
    /// Pusher API does: a publish keyed this way carries a message id derived from the key).
    #[must_use]
    pub const fn pending_lease(mut self, lease: Duration) -> Self {
        self.shared.pending_lease = lease;
        self
    }

    /// How long a retry waits for an in-flight first request before answering 503.
    #[must_use]
    pub const fn in_flight_wait(mut self, wait: Duration) -> Self {
        self.shared.in_flight_wait = wait;
        self
    }

    /// How often a waiting retry re-reads the record (at least 1 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.shared.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The largest body the layer reads itself (when no [`RequestBody`](crate::layers::RequestBody)
    /// extension is present); larger bodies are answered 413.
    #[must_use]
    pub const fn max_body_bytes(mut self, limit: usize) -> Self {
        self.shared.max_body_bytes = limit;
        self
    }

    /// The largest response of a keyed request the layer reads to store it for replay. A
    /// larger one has taken effect but cannot be kept: the request is answered 500 and the
    /// key stays claimed (retries get 503) until its pending lease ends, so the effect is
    /// not repeated within it.
    #[must_use]
    pub const fn max_response_bytes(mut self, limit: usize) -> Self {
        self.shared.max_response_bytes = limit;
        self
    }

    /// Prefix of the cache keys of request records (default [`DEFAULT_KEY_PREFIX`]).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.shared.key_prefix = prefix.into();
        self
    }

    /// The configured TTL.
    #[must_use]
    pub const fn get_ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The configured in-flight wait.
    #[must_use]
    pub const fn get_in_flight_wait(&self) -> Duration {
        self.shared.in_flight_wait
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_shared(inner, Arc::new(self.shared.clone()))
    }
}
