//! A V2 connection's resume bookkeeping between frames: positions that a `sockudo:resume`
//! named before the channel was subscribed, and channels whose live frames are held for a
//! moment after a subscribe in case a resume for them follows.
//!
//! Real clients send their resume before their subscribes (sockudo-python sends it first,
//! and a private channel's subscribe waits for its auth request), with them, or right after
//! them without waiting for `subscription_succeeded`. Whatever the order, the replay of a
//! resumed channel must reach the client before any live frame of it:
//! - a position for a channel not subscribed yet is parked here and applied when the
//!   subscribe completes (bounded in number and in time; an expired one is answered with
//!   `resume_failed`, never dropped silently);
//! - after a V2 subscribe the channel's live frames wait a short grace period; a resume
//!   naming the channel takes them over, otherwise they are released in order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::v2::PositionData;

/// Most positions one connection may have parked at once.
pub const MAX_PARKED: usize = 256;

/// Parked positions and grace holds of one connection.
#[derive(Debug, Default)]
pub struct ResumeWaits {
    parked: HashMap<String, (PositionData, Instant)>,
    grace: HashMap<Arc<str>, Instant>,
}

/// Deadlines that passed (see [`ResumeWaits::expired`]).
#[derive(Debug, Default)]
pub struct Expired {
    /// Positions whose channel was not subscribed in time.
    pub parked: Vec<(String, PositionData)>,
    /// Channels whose grace ended without a resume.
    pub grace: Vec<Arc<str>>,
}

impl ResumeWaits {
    /// Keep `position` for `channel` until `deadline`. False when the bound is reached (the
    /// caller fails the channel instead). A channel named again replaces its position.
    pub fn park(&mut self, channel: String, position: PositionData, deadline: Instant) -> bool {
        if self.parked.len() >= MAX_PARKED && !self.parked.contains_key(&channel) {
            return false;
        }
        self.parked.insert(channel, (position, deadline));
        true
    }

    /// The position parked for `channel`, if any (removed).
    pub fn take(&mut self, channel: &str) -> Option<PositionData> {
        self.parked.remove(channel).map(|(p, _)| p)
    }

    /// Hold `channel`'s live frames until `deadline` unless a resume comes first.
    pub fn start_grace(&mut self, channel: Arc<str>, deadline: Instant) {
        self.grace.insert(channel, deadline);
    }

    /// Stop the grace of `channel` (a resume or an unsubscribe took over); whether it had one.
    pub fn end_grace(&mut self, channel: &str) -> bool {
        self.grace.remove(channel).is_some()
    }

    /// Whether anything waits (checked by the connection loop on every turn: cheap).
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty() && self.grace.is_empty()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.parked
            .values()
            .map(|(_, d)| *d)
            .chain(self.grace.values().copied())
            .min()
    }

    /// Remove and return everything due at `now`.
    pub fn expired(&mut self, now: Instant) -> Expired {
        let mut out = Expired::default();
        let due: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            if let Some((p, _)) = self.parked.remove(&c) {
                out.parked.push((c, p));
            }
        }
        self.grace.retain(|c, d| {
            if *d <= now {
                out.grace.push(Arc::clone(c));
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pos(serial: u64) -> PositionData {
        PositionData {
            serial,
            stream_id: Some("s".into()),
            last_message_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn parked_positions_and_graces_expire_in_time() {
        let mut w = ResumeWaits::default();
        let now = Instant::now();
        assert!(w.park("a".into(), pos(1), now + Duration::from_secs(2)));
        w.start_grace("b".into(), now + Duration::from_millis(250));
        assert_eq!(w.next_deadline(), Some(now + Duration::from_millis(250)));
        let e = w.expired(now + Duration::from_millis(300));
        assert_eq!(e.grace, vec![Arc::<str>::from("b")]);
        assert!(e.parked.is_empty());
        assert_eq!(w.take("a").map(|p| p.serial), Some(1));
        assert!(w.is_empty());
    }

    #[test]
    fn parking_is_bounded() {
        let mut w = ResumeWaits::default();
        let d = Instant::now();
        for i in 0..MAX_PARKED {
            assert!(w.park(format!("c{i}"), pos(1), d));
        }
        assert!(!w.park("one-more".into(), pos(1), d));
        assert!(w.park("c0".into(), pos(2), d), "replacing is not growing");
    }
}
