//! Two live nodes under one node id ("twins"): detection and who steps back.
//!
//! A node id names a node's presence contributions and its reply topic, so two live nodes
//! sharing one would sweep each other's members and read each other's answers. Each adapter
//! instance carries an *epoch* ([`new_epoch`]): the start time in milliseconds in the high bits,
//! random low bits. A message with our node id and another epoch comes from a twin. The
//! **newer** twin (larger epoch) steps back: it does not sweep the id's presence at start,
//! refuses presence joins, reports itself unready and does not withdraw the id's presence
//! when it leaves. The older one logs the conflict and keeps serving. When the older twin
//! leaves or stays silent for the node timeout, the newer one takes the id over.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::time::Instant;

/// How many distinct twin epochs are remembered (a bound against a flood of forged ones).
const MAX_TWINS: usize = 8;

/// A fresh epoch: start time (ms since the Unix epoch) << 20 | 20 random bits, so a node
/// started later has a larger epoch unless the two clocks disagree by more than the gap.
pub(crate) fn new_epoch() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX >> 20))
        .unwrap_or(0);
    (ms.min(u64::MAX >> 20) << 20) | (rand::random::<u64>() & 0xF_FFFF)
}

/// What hearing a twin meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// First message of this twin: log it and answer at once so it learns about us too.
    New,
    /// A twin already known.
    Known,
}

/// The twins this node currently hears.
#[derive(Debug)]
pub(crate) struct Twins {
    my_epoch: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Epoch → when last heard.
    heard: HashMap<u64, Instant>,
    /// Set while this node stepped back and has not yet swept the id's presence.
    sweep_owed: bool,
}

impl Twins {
    pub(crate) fn new(my_epoch: u64) -> Self {
        Twins {
            my_epoch,
            state: Mutex::new(State::default()),
        }
    }

    /// A message under our id with `epoch` arrived.
    pub(crate) fn heard(&self, epoch: u64, now: Instant) -> Heard {
        let mut s = self.state.lock();
        if s.heard.insert(epoch, now).is_some() {
            return Heard::Known;
        }
        if s.heard.len() > MAX_TWINS {
            if let Some(stalest) = s.heard.iter().min_by_key(|(_, t)| **t).map(|(e, _)| *e) {
                s.heard.remove(&stalest);
            }
        }
        Heard::New
    }

    /// The twin with `epoch` left the cluster.
    pub(crate) fn left(&self, epoch: u64) {
        self.state.lock().heard.remove(&epoch);
    }

    /// Forget twins unheard for `timeout`; returns how many were forgotten.
    pub(crate) fn expire(&self, now: Instant, timeout: Duration) -> usize {
        let mut s = self.state.lock();
        let before = s.heard.len();
        s.heard.retain(|_, t| now.duration_since(*t) <= timeout);
        before - s.heard.len()
    }

    /// Whether this node must stay back: an older twin is alive, or the id's leftovers have
    /// not been swept yet (joins accepted before that sweep would be swept with them).
    pub(crate) fn stepped_back(&self) -> bool {
        let s = self.state.lock();
        s.sweep_owed || s.heard.keys().any(|e| *e < self.my_epoch)
    }

    /// Remember that the id's presence was not swept at start (an older twin owned it).
    pub(crate) fn owe_sweep(&self) {
        self.state.lock().sweep_owed = true;
    }

    /// Whether a sweep is owed and no older twin is left: the caller sweeps now, and calls
    /// [`Twins::swept`] once the sweep succeeded (until then this node stays back).
    pub(crate) fn sweep_due(&self) -> bool {
        let s = self.state.lock();
        s.sweep_owed && !s.heard.keys().any(|e| *e < self.my_epoch)
    }

    /// The owed sweep succeeded: this node owns the id now.
    pub(crate) fn swept(&self) {
        self.state.lock().sweep_owed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_epochs_are_larger() {
        let a = new_epoch();
        std::thread::sleep(Duration::from_millis(3));
        assert!(new_epoch() > a);
    }

    #[tokio::test]
    async fn the_newer_twin_steps_back_until_the_older_is_gone() {
        let now = Instant::now();
        let newer = Twins::new(100);
        assert_eq!(newer.heard(50, now), Heard::New);
        assert_eq!(newer.heard(50, now), Heard::Known);
        assert!(newer.stepped_back());
        newer.owe_sweep();
        assert!(!newer.sweep_due());
        assert_eq!(
            newer.expire(now + Duration::from_secs(11), Duration::from_secs(10)),
            1
        );
        assert!(newer.sweep_due());
        assert!(newer.stepped_back(), "back until the sweep succeeded");
        newer.swept();
        assert!(!newer.stepped_back());
        assert!(!newer.sweep_due(), "owed once");

        let older = Twins::new(50);
        older.heard(100, now);
        assert!(!older.stepped_back());
        older.left(100);
        assert!(older.state.lock().heard.is_empty());
    }

    #[tokio::test]
    async fn a_flood_of_forged_epochs_stays_bounded() {
        let t = Twins::new(1);
        let now = Instant::now();
        for e in 2..10_000 {
            t.heard(e, now);
        }
        assert!(t.state.lock().heard.len() <= MAX_TWINS);
    }
}
