//! A circuit breaker per (provider, app), on each node: after [`THRESHOLD`] consecutive
//! unavailability answers (5xx, timeouts, network errors — not 429, which `Retry-After`
//! handles) the provider is not called for that app for [`COOLDOWN`]; then one shard probes
//! it (half-open) and a success closes the breaker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Consecutive failures that open the breaker.
pub const THRESHOLD: u32 = 10;
/// How long an open breaker refuses.
pub const COOLDOWN: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

/// The breakers of one node.
#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<HashMap<(String, String), State>>,
}

impl Breakers {
    /// `Err(wait)` while the breaker of (provider, app) is open.
    pub fn check(&self, provider: &str, app: &str) -> Result<(), Duration> {
        let states = self.states.lock();
        match states
            .get(&(provider.to_owned(), app.to_owned()))
            .and_then(|s| s.open_until)
        {
            Some(until) if until > Instant::now() => Err(until - Instant::now()),
            _ => Ok(()),
        }
    }

    /// Record one answer; true when this opened the breaker.
    pub fn record(&self, provider: &str, app: &str, failed: bool) -> bool {
        let mut states = self.states.lock();
        let s = states
            .entry((provider.to_owned(), app.to_owned()))
            .or_default();
        if !failed {
            *s = State::default();
            return false;
        }
        s.failures += 1;
        let open = s.open_until.is_none_or(|u| u <= Instant::now());
        if s.failures >= THRESHOLD && open {
            s.open_until = Some(Instant::now() + COOLDOWN);
            s.failures = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let b = Breakers::default();
        for _ in 0..THRESHOLD - 1 {
            assert!(!b.record("fcm", "a", true));
        }
        assert!(b.check("fcm", "a").is_ok());
        assert!(b.record("fcm", "a", true), "the threshold opens it");
        assert!(b.check("fcm", "a").is_err());
        assert!(b.check("fcm", "other-app").is_ok(), "per app");
        assert!(b.check("apns", "a").is_ok(), "per provider");
        b.record("fcm", "a", false);
        assert!(b.check("fcm", "a").is_ok(), "a success closes it");
    }
}
