//! The GCRA decision ([`gcra_decide`]), the [`Quota`] it enforces, and the [`RateLimiter`]
//! handle that runs it over the shared [`Cache`].

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::cache::{Cache, CacheError};

/// How many requests a key may make: a sustained rate (one request per *emission interval*)
/// plus a burst allowance (how many may arrive back to back after a quiet period).
///
/// The limiter works in whole milliseconds (the stored theoretical arrival time is an integer
/// number of ms), so the emission interval is rounded to the nearest millisecond, and never
/// below 1 ms: a sustained rate above 1000 requests per second per key is not expressible,
/// and rates that do not divide 1000 are approximated (`per_second(300)` runs at 1 per 3 ms,
/// i.e. 333/s). [`emission_interval_ms`](Self::emission_interval_ms) shows the effective value.
///
/// ```rust
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use sockudo_core::layers::rate_limit::Quota;
///
/// let ten = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN);
/// let quota = Quota::per_second(ten); // 10/s, burst 10
/// assert_eq!((quota.emission_interval_ms(), quota.burst()), (100, 10));
///
/// let quota = Quota::per_second(ten).allow_burst(NonZeroU32::MIN); // 10/s, no bursts
/// assert_eq!(quota.burst(), 1);
///
/// let quota = Quota::with_period(Duration::from_secs(6)).map(|q| q.emission_interval_ms());
/// assert_eq!(quota, Some(6_000)); // one request every 6 s, burst 1
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    emission_interval_ms: u64,
    burst: u32,
}

impl Quota {
    /// `rate` requests per second, with a burst of `rate`.
    #[must_use]
    pub fn per_second(rate: NonZeroU32) -> Self {
        Self::per_period(rate, Duration::from_secs(1))
    }

    /// `rate` requests per minute, with a burst of `rate`.
    #[must_use]
    pub fn per_minute(rate: NonZeroU32) -> Self {
        Self::per_period(rate, Duration::from_secs(60))
    }

    /// `count` requests per `period`, with a burst of `count`. A zero period is treated as
    /// 1 ms.
    #[must_use]
    pub fn per_period(count: NonZeroU32, period: Duration) -> Self {
        let period_us = period.as_micros();
        let count = u128::from(count.get());
        // Round to the nearest ms: (period_us / count + 500) / 1000, in integers.
        let interval_ms = (period_us + count * 500) / (count * 1000);
        Self {
            emission_interval_ms: u64::try_from(interval_ms).unwrap_or(u64::MAX).max(1),
            burst: u32::try_from(count).unwrap_or(u32::MAX),
        }
    }

    /// One request per `period`, burst 1; `None` for a zero period.
    #[must_use]
    pub fn with_period(period: Duration) -> Option<Self> {
        if period.is_zero() {
            return None;
        }
        Some(Self::per_period(NonZeroU32::MIN, period))
    }

    /// Replace the burst: how many requests may arrive at once after a quiet period.
    #[must_use]
    pub const fn allow_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst.get();
        self
    }

    /// The time one request "costs", in ms (at least 1).
    #[must_use]
    pub const fn emission_interval_ms(&self) -> u64 {
        self.emission_interval_ms
    }

    /// The burst allowance (at least 1); also the `X-RateLimit-Limit` header value.
    #[must_use]
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// How long a stored arrival time stays meaningful: `burst × emission interval`. The
    /// limiter stores keys with this TTL, so idle keys disappear from the cache.
    #[must_use]
    pub fn burst_window(&self) -> Duration {
        Duration::from_millis(
            self.emission_interval_ms
                .saturating_mul(u64::from(self.burst)),
        )
    }
}

/// The outcome of one [`gcra_decide`] / [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The burst allowance (`X-RateLimit-Limit`).
    pub limit: u32,
    /// How many more requests would be allowed right now, after this one
    /// (`X-RateLimit-Remaining`); 0 when rejected.
    pub remaining: u32,
    /// When rejected: how long until a request would be allowed, in ms (> 0). 0 when allowed.
    pub retry_after_ms: u64,
    /// How long until the full burst is available again, in ms (`X-RateLimit-Reset`).
    pub reset_after_ms: u64,
    /// The theoretical arrival time to store when allowed (unchanged when rejected), in ms.
    pub tat_ms: u64,
}

impl Decision {
    /// [`retry_after_ms`](Self::retry_after_ms) in whole seconds, rounded up, and at least 1
    /// when rejected: the `Retry-After` header value.
    #[must_use]
    pub const fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            let secs = self.retry_after_ms.div_ceil(1000);
            if secs == 0 {
                1
            } else {
                secs
            }
        }
    }

    /// [`reset_after_ms`](Self::reset_after_ms) in whole seconds, rounded up: the
    /// `X-RateLimit-Reset` header value (a delta, not an epoch time).
    #[must_use]
    pub const fn reset_after_secs(&self) -> u64 {
        self.reset_after_ms.div_ceil(1000)
    }
}

/// The Generic Cell Rate Algorithm, as a pure function.
///
/// `tat_ms` is the key's stored *theoretical arrival time* (`None`: no record, i.e. a full
/// budget). A request at `now_ms` is allowed when `max(tat, now) - now ≤ (burst - 1) ×
/// emission_interval_ms`; then the new TAT is `max(tat, now) + emission_interval_ms`. So after
/// a quiet period `burst` requests pass back to back, and in the long run one per emission
/// interval. All arithmetic saturates; a zero `emission_interval_ms` or `burst` is treated as 1.
///
/// ```rust
/// use sockudo_core::layers::rate_limit::gcra_decide;
///
/// // 1 per 100 ms, burst 2.
/// let first = gcra_decide(1_000, None, 100, 2);
/// assert!(first.allowed && first.remaining == 1);
/// let second = gcra_decide(1_000, Some(first.tat_ms), 100, 2);
/// assert!(second.allowed && second.remaining == 0);
/// let third = gcra_decide(1_000, Some(second.tat_ms), 100, 2);
/// assert!(!third.allowed);
/// assert_eq!(third.retry_after_ms, 100);
/// assert!(gcra_decide(1_100, Some(second.tat_ms), 100, 2).allowed);
/// ```
#[must_use]
pub fn gcra_decide(
    now_ms: u64,
    tat_ms: Option<u64>,
    emission_interval_ms: u64,
    burst: u32,
) -> Decision {
    let interval = emission_interval_ms.max(1);
    let burst = burst.max(1);
    // Delay variation tolerance: how far ahead of `now` the TAT may run.
    let tolerance = interval.saturating_mul(u64::from(burst - 1));
    let tat = tat_ms.map_or(now_ms, |tat| tat.max(now_ms));
    let ahead = tat - now_ms;
    if ahead > tolerance {
        return Decision {
            allowed: false,
            limit: burst,
            remaining: 0,
            retry_after_ms: ahead - tolerance,
            reset_after_ms: ahead,
            tat_ms: tat,
        };
    }
    let new_tat = tat.saturating_add(interval);
    let new_ahead = new_tat - now_ms;
    let remaining = if new_ahead > tolerance {
        0
    } else {
        (tolerance - new_ahead) / interval + 1
    };
    Decision {
        allowed: true,
        limit: burst,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(burst - 1),
        retry_after_ms: 0,
        reset_after_ms: new_ahead,
        tat_ms: new_tat,
    }
}

/// Default [`RateLimiter::max_cas_retries`].
pub const DEFAULT_MAX_CAS_RETRIES: u32 = 8;

/// Default [`RateLimiter::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "sockudo:ratelimit:";

/// A clock in unix milliseconds.
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// GCRA over the shared [`Cache`]: every node checking the same key draws on one budget.
///
/// Each key's theoretical arrival time is stored as a decimal string of unix milliseconds
/// under `key_prefix + key`, with a TTL of the quota's [burst window](Quota::burst_window).
/// [`check`](Self::check) reads it, decides with [`gcra_decide`], and writes the new TAT
/// with [`Cache::compare_and_swap`] against the value it read; a lost race (another node
/// moved the TAT first) re-reads and decides again, up to
/// [`max_cas_retries`](Self::max_cas_retries) times. A key that keeps losing is answered
/// as rejected (`retry_after` one emission interval): every lost race means another request
/// on that key was admitted meanwhile, so the key is busy, and refusing is the safe side.
///
/// Time is the wall clock of the checking node, so nodes should be NTP-synchronised: a skew
/// of `d` ms shifts a key's budget by `d` ms between nodes.
///
/// The server also uses this handle directly, e.g. to limit WebSocket upgrades per client IP:
///
/// ```rust
/// use std::num::NonZeroU32;
/// use std::sync::Arc;
/// use sockudo_core::cache::MemoryCache;
/// use sockudo_core::layers::rate_limit::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sockudo_core::cache::CacheError> {
/// let quota = Quota::per_second(NonZeroU32::MIN).allow_burst(NonZeroU32::MIN.saturating_add(1));
/// let limiter = RateLimiter::new(Arc::new(MemoryCache::new()), quota);
/// assert!(limiter.check("ws:203.0.113.7").await?.allowed);
/// assert!(limiter.check("ws:203.0.113.7").await?.allowed);
/// let third = limiter.check("ws:203.0.113.7").await?;
/// assert!(!third.allowed);
/// assert_eq!(third.retry_after_secs(), 1);
/// assert!(limiter.check("ws:198.51.100.1").await?.allowed); // another key, its own budget
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    cache: Arc<dyn Cache>,
    quota: Quota,
    key_prefix: Arc<str>,
    max_cas_retries: u32,
    clock: Clock,
}

impl RateLimiter {
    /// A limiter enforcing `quota` per key over `cache`, with the system clock.
    #[must_use]
    pub fn new(cache: Arc<dyn Cache>, quota: Quota) -> Self {
        Self {
            cache,
            quota,
            key_prefix: Arc::from(DEFAULT_KEY_PREFIX),
            max_cas_retries: DEFAULT_MAX_CAS_RETRIES,
            clock: Arc::new(system_clock_ms),
        }
    }

    /// Prefix of every cache key this limiter writes (default [`DEFAULT_KEY_PREFIX`]). Give
    /// limiters with different quotas different prefixes so they do not share budgets.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How many times a lost compare-and-swap race is retried (default
    /// [`DEFAULT_MAX_CAS_RETRIES`]); attempts are `1 + retries`.
    #[must_use]
    pub const fn max_cas_retries(mut self, retries: u32) -> Self {
        self.max_cas_retries = retries;
        self
    }

    /// Replace the clock (unix milliseconds); meant for tests.
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The enforced quota.
    #[must_use]
    pub const fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Decide for one request on `key` and, when allowed, consume its share of the budget.
    ///
    /// # Errors
    /// Any [`CacheError`] from the shared cache: the outcome is then unknown, and the caller
    /// chooses to fail open or closed.
    pub async fn check(&self, key: &str) -> Result<Decision, CacheError> {
        let cache_key = format!("{}{key}", self.key_prefix);
        let interval = self.quota.emission_interval_ms;
        let burst = self.quota.burst;
        let ttl = Some(self.quota.burst_window());
        for _ in 0..=self.max_cas_retries {
            let current = self.cache.get(&cache_key).await?;
            // A value that does not parse (written by something else) counts as no record;
            // the swap below still compares against it, so it gets replaced.
            let tat = current
                .as_deref()
                .and_then(|raw| std::str::from_utf8(raw).ok())
                .and_then(|text| text.parse::<u64>().ok());
            let decision = gcra_decide((self.clock)(), tat, interval, burst);
            if !decision.allowed {
                return Ok(decision);
            }
            let new = Bytes::from(decision.tat_ms.to_string());
            if self
                .cache
                .compare_and_swap(&cache_key, current.as_deref(), new, ttl)
                .await?
            {
                return Ok(decision);
            }
        }
        tracing::debug!(key = %cache_key, "rate limit compare-and-swap kept losing; rejecting");
        Ok(Decision {
            allowed: false,
            limit: burst,
            remaining: 0,
            retry_after_ms: interval,
            reset_after_ms: self
                .quota
                .burst_window()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            tat_ms: 0,
        })
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .field("key_prefix", &self.key_prefix)
            .field("max_cas_retries", &self.max_cas_retries)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn quotas() {
        assert_eq!(Quota::per_second(nz(1)).emission_interval_ms(), 1000);
        assert_eq!(Quota::per_second(nz(3)).emission_interval_ms(), 333);
        assert_eq!(Quota::per_second(nz(1000)).emission_interval_ms(), 1);
        assert_eq!(Quota::per_second(nz(100_000)).emission_interval_ms(), 1);
        assert_eq!(Quota::per_minute(nz(60)).emission_interval_ms(), 1000);
        assert_eq!(Quota::per_second(nz(7)).burst(), 7);
        assert_eq!(Quota::per_second(nz(7)).allow_burst(nz(2)).burst(), 2);
        assert_eq!(Quota::with_period(Duration::ZERO), None);
        assert_eq!(
            Quota::per_second(nz(10)).burst_window(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn fresh_key_allows_exactly_burst_then_rejects() {
        let mut tat = None;
        for i in 0..5 {
            let d = gcra_decide(10_000, tat, 100, 5);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.limit, 5);
            assert_eq!(d.reset_after_ms, u64::from(i + 1) * 100);
            tat = Some(d.tat_ms);
        }
        let d = gcra_decide(10_000, tat, 100, 5);
        assert!(!d.allowed);
        assert_eq!(
            (d.remaining, d.retry_after_ms, d.reset_after_ms),
            (0, 100, 500)
        );
        assert_eq!(d.retry_after_secs(), 1);
        assert_eq!(d.tat_ms, 10_500, "a rejection does not move the TAT");
        // 50 ms later: still 50 ms to wait; 100 ms later: allowed again.
        assert_eq!(gcra_decide(10_050, tat, 100, 5).retry_after_ms, 50);
        assert!(gcra_decide(10_100, tat, 100, 5).allowed);
    }

    #[test]
    fn old_tat_means_full_budget_and_degenerate_inputs_do_not_panic() {
        let d = gcra_decide(10_000, Some(1), 100, 3);
        assert_eq!((d.allowed, d.remaining, d.tat_ms), (true, 2, 10_100));
        let d = gcra_decide(0, None, 0, 0);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.tat_ms), (1, 0, 1));
        let d = gcra_decide(u64::MAX, Some(u64::MAX), u64::MAX, u32::MAX);
        assert!(d.allowed);
        let d = gcra_decide(0, Some(u64::MAX), 10, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, u64::MAX);
        assert_eq!(d.retry_after_secs(), u64::MAX.div_ceil(1000));
    }

    #[test]
    fn header_seconds_round_up() {
        let d = gcra_decide(0, Some(2_001), 1_000, 1);
        assert_eq!((d.retry_after_ms, d.retry_after_secs()), (2_001, 3));
        assert_eq!(d.reset_after_secs(), 3);
        let d = gcra_decide(0, Some(1), 1, 1);
        assert_eq!((d.retry_after_ms, d.retry_after_secs()), (1, 1));
        let allowed = gcra_decide(0, None, 1_500, 1);
        assert_eq!(
            (allowed.retry_after_secs(), allowed.reset_after_secs()),
            (0, 2)
        );
    }

    proptest! {
        /// In any window of length `w` ms, at most `burst + ceil(w / interval)` requests pass,
        /// whatever the arrival pattern.
        #[test]
        fn never_more_than_burst_plus_rate(
            interval in 1u64..500,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..300, 1..300),
            window in 1u64..5_000,
        ) {
            let mut now = 1_000_000u64;
            let mut tat = None;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                let d = gcra_decide(now, tat, interval, burst);
                if d.allowed {
                    admitted.push(now);
                    tat = Some(d.tat_ms);
                }
            }
            let bound = u64::from(burst) + window.div_ceil(interval);
            for (i, start) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|t| **t < start + window).count();
                prop_assert!(in_window as u64 <= bound, "{in_window} > {bound}");
            }
        }

        /// `remaining` is exact: that many further requests at the same instant pass, and the
        /// next one is rejected; a rejected request passes once `retry_after_ms` has elapsed.
        #[test]
        fn remaining_and_retry_after_are_exact(
            interval in 1u64..1_000,
            burst in 1u32..30,
            start_tat in proptest::option::of(0u64..40_000),
            now in 10_000u64..20_000,
        ) {
            let d = gcra_decide(now, start_tat, interval, burst);
            let mut tat = Some(d.tat_ms);
            if d.allowed {
                prop_assert!(d.tat_ms > now);
                prop_assert!(d.tat_ms - now <= interval * u64::from(burst), "TTL bound");
                for _ in 0..d.remaining {
                    let next = gcra_decide(now, tat, interval, burst);
                    prop_assert!(next.allowed);
                    tat = Some(next.tat_ms);
                }
                let over = gcra_decide(now, tat, interval, burst);
                prop_assert!(!over.allowed);
                prop_assert!(over.retry_after_ms > 0);
                prop_assert!(gcra_decide(now + over.retry_after_ms, tat, interval, burst).allowed);
                prop_assert!(!gcra_decide(now + over.retry_after_ms - 1, tat, interval, burst).allowed);
            } else {
                prop_assert_eq!(d.remaining, 0);
                prop_assert!(d.retry_after_ms > 0);
                prop_assert!(gcra_decide(now + d.retry_after_ms, tat, interval, burst).allowed);
            }
        }
    }

    #[tokio::test]
    async fn limiter_shares_one_budget_and_keys_expire() {
        let cache = Arc::new(MemoryCache::new());
        let now = Arc::new(AtomicU64::new(50_000));
        let clock = {
            let now = Arc::clone(&now);
            move || now.load(Ordering::SeqCst)
        };
        let quota = Quota::per_second(nz(10)).allow_burst(nz(2));
        // Two "nodes" over one cache.
        let a = RateLimiter::new(cache.clone(), quota).clock(clock.clone());
        let b = RateLimiter::new(cache.clone(), quota).clock(clock);
        assert!(a.check("k").await.unwrap().allowed);
        assert!(b.check("k").await.unwrap().allowed);
        let d = a.check("k").await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
        assert_eq!(
            cache.get("sockudo:ratelimit:k").await.unwrap().as_deref(),
            Some(&b"50200"[..])
        );
        now.fetch_add(100, Ordering::SeqCst);
        assert!(b.check("k").await.unwrap().allowed);
        assert!(!a.check("k").await.unwrap().allowed);
        assert!(a.check("other").await.unwrap().allowed);
    }

    #[tokio::test]
    async fn unparsable_record_is_replaced() {
        let cache = Arc::new(MemoryCache::new());
        cache
            .set("p:k", Bytes::from_static(b"garbage"), None)
            .await
            .unwrap();
        let limiter = RateLimiter::new(cache.clone(), Quota::per_second(nz(1)))
            .key_prefix("p:")
            .clock(|| 7_000);
        assert!(limiter.check("k").await.unwrap().allowed);
        assert_eq!(
            cache.get("p:k").await.unwrap().as_deref(),
            Some(&b"8000"[..])
        );
        assert!(format!("{limiter:?}").contains("RateLimiter"));
    }

    /// A cache whose compare-and-swap always loses, as if another node always won the race.
    #[derive(Debug, Default)]
    struct AlwaysRacing {
        inner: MemoryCache,
        swaps: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Cache for AlwaysRacing {
        async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
            self.inner.get(key).await
        }
        async fn set(
            &self,
            key: &str,
            value: Bytes,
            ttl: Option<Duration>,
        ) -> Result<(), CacheError> {
            self.inner.set(key, value, ttl).await
        }
        async fn set_if_absent(
            &self,
            key: &str,
            value: Bytes,
            ttl: Option<Duration>,
        ) -> Result<bool, CacheError> {
            self.inner.set_if_absent(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<bool, CacheError> {
            self.inner.delete(key).await
        }
        async fn increment(
            &self,
            key: &str,
            delta: i64,
            ttl: Option<Duration>,
        ) -> Result<i64, CacheError> {
            self.inner.increment(key, delta, ttl).await
        }
        async fn compare_and_swap(
            &self,
            _: &str,
            _: Option<&[u8]>,
            _: Bytes,
            _: Option<Duration>,
        ) -> Result<bool, CacheError> {
            self.swaps.fetch_add(1, Ordering::SeqCst);
            Ok(false)
        }
    }

    #[tokio::test]
    async fn bounded_retries_then_rejected() {
        let cache = Arc::new(AlwaysRacing::default());
        let limiter = RateLimiter::new(cache.clone(), Quota::per_second(nz(5))).max_cas_retries(3);
        let d = limiter.check("k").await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 200);
        assert_eq!(cache.swaps.load(Ordering::SeqCst), 4);
    }
}
