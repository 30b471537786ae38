//! A token bucket for per-connection rates (subscribes per second).

use tokio::time::Instant;

/// `burst` tokens, refilled at `per_second`; a rate of 0 means no limit.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            tokens: burst,
            last: Instant::now(),
            per_second: f64::from(per_second),
            burst,
        }
    }

    /// Take one token; false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t = Instant::now();
        assert!((0..3).all(|_| b.take(t)));
        assert!(!b.take(t), "the burst is spent");
        assert!(
            b.take(t + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(t + Duration::from_millis(150)));
        assert!(
            (0..3).all(|_| b.take(t + Duration::from_secs(60))),
            "refills to the burst only"
        );
        assert!(!b.take(t + Duration::from_secs(60)));
        let mut off = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| off.take(t)), "rate 0: no limit");
    }
}
