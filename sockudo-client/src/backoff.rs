//! Reconnect timing: the [`Backoff`] trait, [`ExponentialBackoff`] with full jitter, and the
//! close-code policy of docs/protocol.md §4 ([`reaction`]).

use std::fmt;
use std::time::Duration;

/// Decides how long to wait before reconnect attempt `attempt` (1 for the first retry after
/// a failure, 2 for the next, …). Implementations must be cheap and must not block.
pub trait Backoff: Send + Sync + fmt::Debug + 'static {
    /// The wait before reconnect attempt `attempt` (see the trait docs for the numbering).
    fn delay(&self, attempt: u32) -> Duration;
}

/// Exponential backoff with "full jitter": the delay of attempt `n` is uniform in
/// `[0, min(max, base * factor^(n-1))]`, so a fleet of clients cut off together does not
/// come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Growth per attempt (≥ 1).
    pub factor: f64,
    /// Cap on the upper bound.
    pub max: Duration,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        ExponentialBackoff {
            base: Duration::from_millis(500),
            factor: 2.0,
            max: Duration::from_secs(30),
        }
    }
}

impl ExponentialBackoff {
    /// Delays doubling from `base` up to `max`, with jitter.
    pub fn new(base: Duration, max: Duration) -> Self {
        ExponentialBackoff {
            base,
            max,
            ..Self::default()
        }
    }

    /// The upper bound of attempt `attempt`'s delay (before jitter).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = self.base.as_secs_f64() * factor.powi(exp);
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The delay for `attempt` given a jitter sample `unit` in `[0, 1]`: pure, for tests.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            1.0
        };
        self.ceiling(attempt).mul_f64(unit)
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

/// A backoff that always waits the same time (useful in tests and for fixed schedules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstantBackoff(pub Duration);

impl Backoff for ConstantBackoff {
    fn delay(&self, _attempt: u32) -> Duration {
        self.0
    }
}

/// What to do after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// 4000–4099: the server refuses this client as configured; retrying cannot help.
    DoNotRetry,
    /// 4100–4199: come back later, not sooner than `min`.
    BackoffAtLeast(Duration),
    /// 4200–4299: reconnect now (the first attempt has no delay).
    Immediate,
    /// Network failures and every other code: reconnect with backoff.
    Backoff,
}

/// The minimum wait after a 4100–4199 close (docs/protocol.md §4).
pub const OVER_CAPACITY_MIN_DELAY: Duration = Duration::from_secs(1);

/// The reconnect reaction to a close `code` (`None`: the socket dropped without one).
pub fn reaction(code: Option<u16>) -> Reaction {
    match code {
        Some(4000..=4099) => Reaction::DoNotRetry,
        Some(4100..=4199) => Reaction::BackoffAtLeast(OVER_CAPACITY_MIN_DELAY),
        Some(4200..=4299) => Reaction::Immediate,
        _ => Reaction::Backoff,
    }
}

/// The wait before attempt `attempt` under `reaction`; `None` means do not reconnect.
pub fn delay_for(reaction: Reaction, attempt: u32, backoff: &dyn Backoff) -> Option<Duration> {
    match reaction {
        Reaction::DoNotRetry => None,
        Reaction::Immediate if attempt <= 1 => Some(Duration::ZERO),
        Reaction::Immediate | Reaction::Backoff => Some(backoff.delay(attempt)),
        Reaction::BackoffAtLeast(min) => Some(backoff.delay(attempt).max(min)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let b = ExponentialBackoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay_with(3, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay_with(3, f64::NAN), Duration::from_millis(400));
        for attempt in 1..20 {
            let d = b.delay(attempt);
            assert!(d <= b.ceiling(attempt), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn random_delays_are_spread() {
        let b = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let samples: Vec<Duration> = (0..64).map(|_| b.delay(1)).collect();
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 32,
            "jitter must spread delays: {samples:?}"
        );
    }

    #[test]
    fn close_code_policy() {
        assert_eq!(reaction(Some(4001)), Reaction::DoNotRetry);
        assert_eq!(reaction(Some(4009)), Reaction::DoNotRetry);
        assert_eq!(
            reaction(Some(4100)),
            Reaction::BackoffAtLeast(OVER_CAPACITY_MIN_DELAY)
        );
        assert_eq!(reaction(Some(4200)), Reaction::Immediate);
        assert_eq!(reaction(Some(4201)), Reaction::Immediate);
        assert_eq!(reaction(Some(1006)), Reaction::Backoff);
        assert_eq!(reaction(None), Reaction::Backoff);

        let fixed = ConstantBackoff(Duration::from_millis(50));
        assert_eq!(delay_for(Reaction::DoNotRetry, 1, &fixed), None);
        assert_eq!(
            delay_for(Reaction::Immediate, 1, &fixed),
            Some(Duration::ZERO)
        );
        assert_eq!(
            delay_for(Reaction::Immediate, 2, &fixed),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            delay_for(Reaction::BackoffAtLeast(Duration::from_secs(1)), 1, &fixed),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            delay_for(Reaction::Backoff, 1, &fixed),
            Some(Duration::from_millis(50))
        );
    }
}
