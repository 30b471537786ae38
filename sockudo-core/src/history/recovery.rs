//! The resume decision as pure code: given a client's position and what the stores can
//! prove, either "replay exactly this range from this tier" or "fail with this code".
//!
//! Nothing here does I/O. The caller gathers a [`TierView`] of each tier (the node's hot ring
//! buffer and the durable history store), asks [`decide`], replays the chosen range, checks
//! it with [`verify_replay`], and finally releases the live frames it held during the replay
//! through [`merge_held`]. Every step fails closed: a [`Decision::Recover`] is only returned
//! when the chosen tier proves that every serial of the range is retained in the client's
//! stream, and a replay or merge that does not line up exactly is an error, never a partial
//! success.
//!
//! # Rules of [`decide`]
//! 1. The *authoritative* view is the durable store's when it answered, else the hot one.
//!    No view at all: `persistence_unavailable` when the store is down, else
//!    `continuity_unverifiable` (nothing knows the channel's stream).
//! 2. The client's `stream_id` differs from the authoritative one → `stream_reset`.
//! 3. The client's serial is beyond the authoritative head → `continuity_unverifiable`.
//! 4. Nothing to replay (the client is at `upto` or beyond it) → recover an empty range.
//! 5. The hot tier proves the range (same stream, `oldest <= serial + 1`, `head >= upto`) →
//!    recover from hot; else the durable tier proves it → recover from cold.
//! 6. Otherwise: store down → `persistence_unavailable` (even when hot holds part of the
//!    range: never partial); the range reaches beyond what any tier has seen →
//!    `continuity_unverifiable`; else `position_expired` with the available bounds.

use std::fmt;

/// Why a channel could not be resumed (the `code` of `sockudo:resume_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The client's `stream_id` is not the channel's current stream.
    StreamReset,
    /// Messages after the client's position are no longer retained.
    PositionExpired,
    /// The range cannot be proven contiguous (gap, position ahead of the stream, …).
    ContinuityUnverifiable,
    /// The history store is down or degraded.
    PersistenceUnavailable,
}

impl FailureCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::StreamReset => "stream_reset",
            FailureCode::PositionExpired => "position_expired",
            FailureCode::ContinuityUnverifiable => "continuity_unverifiable",
            FailureCode::PersistenceUnavailable => "persistence_unavailable",
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's position in one channel, as sent in `sockudo:resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPosition {
    /// The stream the client was on.
    pub stream_id: String,
    /// The last serial it saw.
    pub serial: u64,
    /// The id of that message, when the client sent it.
    pub last_message_id: Option<String>,
}

/// Where a replay comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The node's in-memory ring buffer.
    Hot,
    /// The durable history store.
    Cold,
}

impl Tier {
    /// The wire name (`source` in `sockudo:resume_success`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cold => "cold",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one tier can prove right now about a channel: every serial in `oldest..=head` of
/// stream `stream_id` is retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierView {
    /// The stream this tier holds.
    pub stream_id: String,
    /// The newest serial of that stream.
    pub head: u64,
    /// Oldest retained serial; `None` = nothing retained.
    pub oldest: Option<u64>,
}

impl TierView {
    /// Whether this view proves that every serial in `(after, upto]` of stream `stream_id`
    /// is retained. An empty range needs only the same stream and `upto <= head`.
    pub fn proves(&self, stream_id: &str, after: u64, upto: u64) -> bool {
        if self.stream_id != stream_id || upto > self.head || after > upto {
            return false;
        }
        if after == upto {
            return true;
        }
        // Needs `oldest <= after + 1` (after < upto <= head, so `after + 1` cannot overflow).
        matches!(self.oldest, Some(oldest) if oldest <= after + 1)
    }
}

/// The outcome of [`decide`] for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Replay serials `(after, upto]` from `source`; nothing to replay when `after == upto`.
    /// Then release held live frames with [`merge_held`]`(upto, …)`.
    Recover {
        /// The tier to replay from.
        source: Tier,
        /// The client's serial (exclusive).
        after: u64,
        /// The last serial to replay (inclusive).
        upto: u64,
    },
    /// Send `sockudo:resume_failed` with these fields.
    Fail {
        /// Why.
        code: FailureCode,
        /// A human-readable explanation.
        reason: String,
        /// The stream the client was on.
        expected_stream_id: String,
        /// The channel's stream now, when known.
        current_stream_id: Option<String>,
        /// The oldest serial still available, when known.
        oldest_available_serial: Option<u64>,
        /// The newest serial available, when known.
        newest_available_serial: Option<u64>,
    },
}

impl Decision {
    /// The failure code, if this is a failure.
    pub fn failure_code(&self) -> Option<FailureCode> {
        match self {
            Decision::Recover { .. } => None,
            Decision::Fail { code, .. } => Some(*code),
        }
    }
}

fn fail(
    code: FailureCode,
    reason: impl Into<String>,
    client: &ClientPosition,
    current: Option<&TierView>,
) -> Decision {
    Decision::Fail {
        code,
        reason: reason.into(),
        expected_stream_id: client.stream_id.clone(),
        current_stream_id: current.map(|v| v.stream_id.clone()),
        oldest_available_serial: current.and_then(|v| v.oldest),
        newest_available_serial: current.map(|v| v.head),
    }
}

/// Decide how to resume one channel.
///
/// `hot`: the node's ring buffer view if it has one for the channel; `cold`: `Ok(Some)` durable
/// store view, `Ok(None)` no durable store configured, `Err(())` store unavailable; `upto`: the
/// serial to replay up to (the caller passes the head, or one below the first live serial
/// already delivered on this connection). When `upto` is below the client's serial the client
/// already has everything up to its own serial, and the decision's `upto` is the client's
/// serial (so [`merge_held`] drops what the client already has).
///
/// See the module docs for the rules. A `Recover` is returned only when the chosen tier's view
/// proves the whole range ([`TierView::proves`]).
pub fn decide(
    client: &ClientPosition,
    hot: Option<&TierView>,
    cold: Result<Option<&TierView>, ()>,
    upto: u64,
) -> Decision {
    let cold_down = cold.is_err();
    let cold = cold.ok().flatten();
    let Some(current) = cold.or(hot) else {
        return if cold_down {
            fail(
                FailureCode::PersistenceUnavailable,
                "history store unavailable and no hot history for the channel",
                client,
                None,
            )
        } else {
            fail(
                FailureCode::ContinuityUnverifiable,
                "no history for the channel",
                client,
                None,
            )
        };
    };
    if current.stream_id != client.stream_id {
        return fail(
            FailureCode::StreamReset,
            "the channel's stream was reset",
            client,
            Some(current),
        );
    }
    if client.serial > current.head {
        return fail(
            FailureCode::ContinuityUnverifiable,
            "position is ahead of the stream",
            client,
            Some(current),
        );
    }
    let after = client.serial;
    let upto = upto.max(after);
    let hot_same = hot.filter(|h| h.stream_id == client.stream_id);
    // An empty range (`after == upto`) still needs a tier of the same stream that has reached
    // `upto`; `proves` covers both cases.
    if hot_same.is_some_and(|h| h.proves(&client.stream_id, after, upto)) {
        return Decision::Recover {
            source: Tier::Hot,
            after,
            upto,
        };
    }
    if cold.is_some_and(|c| c.proves(&client.stream_id, after, upto)) {
        return Decision::Recover {
            source: Tier::Cold,
            after,
            upto,
        };
    }
    if cold_down {
        return fail(
            FailureCode::PersistenceUnavailable,
            "history store unavailable and the hot buffer cannot prove the range",
            client,
            Some(current),
        );
    }
    // Reaching beyond every view of this stream: nothing can vouch for those serials yet.
    let best_head = [hot_same, cold]
        .into_iter()
        .flatten()
        .map(|v| v.head)
        .max()
        .unwrap_or(current.head);
    if upto > best_head {
        return fail(
            FailureCode::ContinuityUnverifiable,
            "replay target is beyond the known head",
            client,
            Some(current),
        );
    }
    // Bounds: the widest retained range among the tiers of the current stream.
    let oldest = [hot_same, cold]
        .into_iter()
        .flatten()
        .filter_map(|v| v.oldest)
        .min();
    Decision::Fail {
        code: FailureCode::PositionExpired,
        reason: "messages after the position are no longer retained".to_owned(),
        expected_stream_id: client.stream_id.clone(),
        current_stream_id: Some(current.stream_id.clone()),
        oldest_available_serial: oldest,
        newest_available_serial: Some(current.head),
    }
}

/// Check that a replayed batch is exactly `(after, upto]`, ascending, contiguous, no
/// duplicates. Any mismatch (including `after > upto`) is `continuity_unverifiable`.
pub fn verify_replay(after: u64, upto: u64, serials: &[u64]) -> Result<(), FailureCode> {
    if after > upto || u64::try_from(serials.len()).ok() != Some(upto - after) {
        return Err(FailureCode::ContinuityUnverifiable);
    }
    let mut expected = after;
    for &s in serials {
        // `expected < upto` here because the length matches, so `+ 1` cannot overflow.
        expected += 1;
        if s != expected {
            return Err(FailureCode::ContinuityUnverifiable);
        }
    }
    Ok(())
}

/// Merge live frames held during a replay that ended at `upto`: drop serials `<= upto`
/// (already replayed) and duplicates (the first one held wins), order ascending. Fails with
/// `continuity_unverifiable` if the remaining serials have a gap (the first must be
/// `upto + 1`, then contiguous).
///
/// Serials are compared only within one stream: the caller must first check that every held
/// frame carries the replayed `stream_id` (a held frame of another stream means the stream
/// was reset during the replay, which this function cannot see).
pub fn merge_held<T>(upto: u64, held: Vec<(u64, T)>) -> Result<Vec<(u64, T)>, FailureCode> {
    let mut out: Vec<(u64, T)> = held.into_iter().filter(|(s, _)| *s > upto).collect();
    // Stable: among equal serials the first held stays first, and dedup keeps it.
    out.sort_by_key(|(s, _)| *s);
    out.dedup_by_key(|(s, _)| *s);
    let mut expected = upto;
    for (s, _) in &out {
        // `s > upto`, so `expected < s <= u64::MAX` and `+ 1` cannot overflow.
        expected += 1;
        if *s != expected {
            return Err(FailureCode::ContinuityUnverifiable);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;

    fn view(sid: &str, head: u64, oldest: Option<u64>) -> TierView {
        TierView {
            stream_id: sid.to_owned(),
            head,
            oldest,
        }
    }

    fn pos(sid: &str, serial: u64) -> ClientPosition {
        ClientPosition {
            stream_id: sid.to_owned(),
            serial,
            last_message_id: None,
        }
    }

    fn code(d: &Decision) -> Option<FailureCode> {
        d.failure_code()
    }

    #[test]
    fn codes_and_tiers_have_wire_names() {
        assert_eq!(FailureCode::StreamReset.as_str(), "stream_reset");
        assert_eq!(FailureCode::PositionExpired.as_str(), "position_expired");
        assert_eq!(
            FailureCode::ContinuityUnverifiable.as_str(),
            "continuity_unverifiable"
        );
        assert_eq!(
            FailureCode::PersistenceUnavailable.as_str(),
            "persistence_unavailable"
        );
        assert_eq!(Tier::Hot.as_str(), "hot");
        assert_eq!(Tier::Cold.to_string(), "cold");
    }

    #[test]
    fn decide_examples() {
        let hot = view("a", 10, Some(6));
        let cold = view("a", 10, Some(2));
        // Hot preferred when it holds everything.
        assert_eq!(
            decide(&pos("a", 5), Some(&hot), Ok(Some(&cold)), 10),
            Decision::Recover {
                source: Tier::Hot,
                after: 5,
                upto: 10
            }
        );
        // Hot misses serial 5 → cold.
        assert_eq!(
            decide(&pos("a", 4), Some(&hot), Ok(Some(&cold)), 10),
            Decision::Recover {
                source: Tier::Cold,
                after: 4,
                upto: 10
            }
        );
        // Neither holds serial 1.
        let d = decide(&pos("a", 0), Some(&hot), Ok(Some(&cold)), 10);
        assert_eq!(
            d,
            Decision::Fail {
                code: FailureCode::PositionExpired,
                reason: "messages after the position are no longer retained".to_owned(),
                expected_stream_id: "a".to_owned(),
                current_stream_id: Some("a".to_owned()),
                oldest_available_serial: Some(2),
                newest_available_serial: Some(10),
            }
        );
        // Store down, hot partial → persistence_unavailable, never partial.
        assert_eq!(
            code(&decide(&pos("a", 4), Some(&hot), Err(()), 10)),
            Some(FailureCode::PersistenceUnavailable)
        );
        // Store down, hot complete → hot.
        assert_eq!(
            decide(&pos("a", 5), Some(&hot), Err(()), 10),
            Decision::Recover {
                source: Tier::Hot,
                after: 5,
                upto: 10
            }
        );
        // Stream changed in the store even though the hot buffer still has the old one.
        assert_eq!(
            code(&decide(
                &pos("a", 5),
                Some(&hot),
                Ok(Some(&view("b", 3, Some(1)))),
                3
            )),
            Some(FailureCode::StreamReset)
        );
        // Ahead of the stream.
        assert_eq!(
            code(&decide(&pos("a", 11), Some(&hot), Ok(Some(&cold)), 10)),
            Some(FailureCode::ContinuityUnverifiable)
        );
        // Idle channel: at the head, nothing retained at all.
        assert_eq!(
            decide(&pos("a", 7), None, Ok(Some(&view("a", 7, None))), 7),
            Decision::Recover {
                source: Tier::Cold,
                after: 7,
                upto: 7
            }
        );
        // Nothing anywhere.
        assert_eq!(
            code(&decide(&pos("a", 0), None, Ok(None), 0)),
            Some(FailureCode::ContinuityUnverifiable)
        );
        assert_eq!(
            code(&decide(&pos("a", 0), None, Err(()), 0)),
            Some(FailureCode::PersistenceUnavailable)
        );
        // The caller's target is beyond what the views have seen.
        assert_eq!(
            code(&decide(&pos("a", 8), Some(&hot), Ok(Some(&cold)), 12)),
            Some(FailureCode::ContinuityUnverifiable)
        );
        // Target below the client's own serial: nothing to replay, merge from the client's serial.
        assert_eq!(
            decide(&pos("a", 8), Some(&hot), Ok(Some(&cold)), 6),
            Decision::Recover {
                source: Tier::Hot,
                after: 8,
                upto: 8
            }
        );
        // Extremes do not overflow.
        let max = view("a", u64::MAX, Some(u64::MAX));
        assert_eq!(
            decide(&pos("a", u64::MAX), Some(&max), Ok(None), u64::MAX),
            Decision::Recover {
                source: Tier::Hot,
                after: u64::MAX,
                upto: u64::MAX
            }
        );
        assert_eq!(
            decide(&pos("a", u64::MAX - 1), Some(&max), Ok(None), u64::MAX),
            Decision::Recover {
                source: Tier::Hot,
                after: u64::MAX - 1,
                upto: u64::MAX
            }
        );
    }

    #[test]
    fn verify_and_merge_examples() {
        assert_eq!(verify_replay(3, 6, &[4, 5, 6]), Ok(()));
        assert_eq!(verify_replay(3, 3, &[]), Ok(()));
        assert!(verify_replay(3, 6, &[4, 6]).is_err());
        assert!(verify_replay(3, 6, &[4, 5, 5, 6]).is_err());
        assert!(verify_replay(3, 6, &[4, 6, 5]).is_err());
        assert!(verify_replay(6, 3, &[]).is_err());
        assert_eq!(verify_replay(u64::MAX - 1, u64::MAX, &[u64::MAX]), Ok(()));

        assert_eq!(
            merge_held(5, vec![(7, 'c'), (6, 'b'), (5, 'a'), (6, 'x')]),
            Ok(vec![(6, 'b'), (7, 'c')])
        );
        assert_eq!(merge_held::<()>(5, vec![]), Ok(vec![]));
        assert_eq!(
            merge_held(5, vec![(7, ())]),
            Err(FailureCode::ContinuityUnverifiable)
        );
        assert_eq!(
            merge_held(5, vec![(6, ()), (8, ())]),
            Err(FailureCode::ContinuityUnverifiable)
        );
        assert_eq!(merge_held(u64::MAX, vec![(u64::MAX, ())]), Ok(vec![]));
    }

    // ---------------------------------------------------------------------------------------
    // `decide` against random histories.

    /// One event in a channel's life.
    #[derive(Debug, Clone)]
    enum Event {
        Publish(u8),
        /// Retention keeps only the newest `n` in the store.
        Trim(u8),
        /// New stream generation (history reset / store flushed).
        Reset,
        /// The node restarts: its hot buffer is gone.
        NodeRestart,
        /// Remember the current position as one a client could hold.
        Observe,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            5 => (1u8..6).prop_map(Event::Publish),
            1 => (0u8..12).prop_map(Event::Trim),
            1 => Just(Event::Reset),
            1 => Just(Event::NodeRestart),
            3 => Just(Event::Observe),
        ]
    }

    fn sid(generation: u32) -> String {
        format!("s{generation}")
    }

    /// A channel's history: the store's current generation and the node's hot buffer.
    #[derive(Debug)]
    struct History {
        generation: u32,
        head: u64,
        /// The store retains `cold_oldest..=head` of the current generation.
        cold_oldest: u64,
        /// The hot buffer: a generation and the contiguous serials it holds.
        hot: Option<(u32, VecDeque<u64>)>,
        hot_cap: usize,
        observed: Vec<(u32, u64)>,
    }

    impl History {
        fn new(hot_cap: usize) -> Self {
            History {
                generation: 0,
                head: 0,
                cold_oldest: 1,
                hot: None,
                hot_cap,
                observed: vec![(0, 0)],
            }
        }

        fn apply(&mut self, e: &Event) {
            match e {
                Event::Publish(n) => {
                    for _ in 0..*n {
                        self.head += 1;
                        let g = self.generation;
                        let hot = self.hot.get_or_insert_with(|| (g, VecDeque::new()));
                        if hot.0 != g {
                            *hot = (g, VecDeque::new());
                        }
                        hot.1.push_back(self.head);
                        while hot.1.len() > self.hot_cap {
                            hot.1.pop_front();
                        }
                    }
                }
                Event::Trim(keep) => {
                    self.cold_oldest = self
                        .cold_oldest
                        .max((self.head + 1).saturating_sub(u64::from(*keep)));
                }
                Event::Reset => {
                    self.generation += 1;
                    self.head = 0;
                    self.cold_oldest = 1;
                }
                Event::NodeRestart => self.hot = None,
                Event::Observe => self.observed.push((self.generation, self.head)),
            }
        }

        fn cold_view(&self) -> TierView {
            let oldest = (self.cold_oldest <= self.head).then_some(self.cold_oldest);
            view(&sid(self.generation), self.head, oldest)
        }

        fn cold_set(&self) -> BTreeSet<(String, u64)> {
            (self.cold_oldest..=self.head)
                .map(|s| (sid(self.generation), s))
                .collect()
        }

        /// The hot view as a node reports it: head = newest buffered serial.
        fn hot_view(&self) -> Option<TierView> {
            let (g, items) = self.hot.as_ref()?;
            let head = *items.back()?;
            Some(view(&sid(*g), head, items.front().copied()))
        }

        fn hot_set(&self) -> BTreeSet<(String, u64)> {
            self.hot
                .iter()
                .flat_map(|(g, items)| items.iter().map(move |s| (sid(*g), *s)))
                .collect()
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Store {
        Up,
        Down,
        NotConfigured,
    }

    fn store() -> impl Strategy<Value = Store> {
        prop_oneof![3 => Just(Store::Up), 1 => Just(Store::Down), 1 => Just(Store::NotConfigured)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Never a `Recover` unless every serial of the range is retained in the chosen tier
        /// of the client's stream; and a `Recover` whenever the authoritative store proves it.
        #[test]
        fn decide_never_recovers_without_proof(
            events in prop::collection::vec(event(), 0..40),
            hot_cap in 1usize..12,
            store in store(),
            pick in any::<prop::sample::Index>(),
            jitter in -2i64..3,
            foreign in any::<bool>(),
            upto_delta in -3i64..3,
        ) {
            let mut h = History::new(hot_cap);
            for e in &events {
                h.apply(e);
            }
            let (g, s) = h.observed[pick.index(h.observed.len())];
            // Mostly real positions, sometimes off by a little or in an unknown stream.
            let serial = s.saturating_add_signed(jitter);
            let client = pos(&if foreign { sid(g + 7) } else { sid(g) }, serial);

            let hot = h.hot_view();
            let cold = h.cold_view();
            let cold_arg = match store {
                Store::Up => Ok(Some(&cold)),
                Store::Down => Err(()),
                Store::NotConfigured => Ok(None),
            };
            let auth_head = match store {
                Store::Up => Some(h.head),
                _ => hot.as_ref().map(|v| v.head),
            };
            let upto = auth_head.unwrap_or(0).saturating_add_signed(upto_delta);
            let d = decide(&client, hot.as_ref(), cold_arg, upto);

            if let Decision::Recover { source, after, upto: to } = &d {
                prop_assert_eq!(*after, client.serial);
                prop_assert_eq!(*to, upto.max(client.serial));
                let set = match source {
                    Tier::Hot => h.hot_set(),
                    Tier::Cold => {
                        prop_assert!(matches!(store, Store::Up), "cold recovery without a store");
                        h.cold_set()
                    }
                };
                for s in (after + 1)..=*to {
                    prop_assert!(set.contains(&(client.stream_id.clone(), s)), "serial {} not retained in {:?}", s, source);
                }
                // The chosen tier has actually reached `upto` in the client's stream.
                let v = if *source == Tier::Hot { hot.clone() } else { Some(cold.clone()) };
                prop_assert!(v.is_some_and(|v| v.stream_id == client.stream_id && v.head >= *to));
                if matches!(store, Store::Up) {
                    prop_assert_eq!(&client.stream_id, &cold.stream_id);
                    prop_assert!(client.serial <= h.head);
                }
            }
            match store {
                Store::Up => {
                    if client.stream_id != cold.stream_id {
                        prop_assert_eq!(code(&d), Some(FailureCode::StreamReset));
                    } else if client.serial > h.head {
                        prop_assert_eq!(code(&d), Some(FailureCode::ContinuityUnverifiable));
                    } else if upto <= h.head && cold.proves(&client.stream_id, client.serial, upto.max(client.serial)) {
                        prop_assert!(matches!(d, Decision::Recover { .. }), "provable but failed: {:?}", d);
                    }
                }
                Store::Down => {
                    if let Some(c) = code(&d) {
                        prop_assert!(matches!(c, FailureCode::PersistenceUnavailable | FailureCode::StreamReset | FailureCode::ContinuityUnverifiable));
                    }
                }
                Store::NotConfigured => {
                    prop_assert_ne!(code(&d), Some(FailureCode::PersistenceUnavailable));
                }
            }
        }

        /// Arbitrary (even inconsistent) views: a `Recover` is always backed by a view of the
        /// client's stream that proves the range.
        #[test]
        fn decide_recover_is_proven_by_a_view(
            hot in prop::option::of((0u8..3, 0u64..20, prop::option::of(0u64..22))),
            cold in prop::option::of(prop::option::of((0u8..3, 0u64..20, prop::option::of(0u64..22)))),
            client in (0u8..3, 0u64..22),
            upto in 0u64..22,
        ) {
            let mk = |(g, head, oldest): (u8, u64, Option<u64>)| view(&sid(u32::from(g)), head, oldest);
            let hot = hot.map(mk);
            let cold: Result<Option<TierView>, ()> = match cold {
                None => Err(()),
                Some(c) => Ok(c.map(mk)),
            };
            let client = pos(&sid(u32::from(client.0)), client.1);
            let d = decide(&client, hot.as_ref(), cold.as_ref().map(Option::as_ref).map_err(|_| ()), upto);
            if let Decision::Recover { source, after, upto: to } = d {
                let v = match source {
                    Tier::Hot => hot.as_ref(),
                    Tier::Cold => cold.as_ref().ok().and_then(Option::as_ref),
                };
                let v = v.expect("recovered from a tier without a view");
                prop_assert!(v.proves(&client.stream_id, after, to));
                if let Some(oldest) = v.oldest.filter(|_| after < to) {
                    prop_assert!(oldest <= after + 1 && to <= v.head);
                }
                if let Ok(Some(c)) = &cold {
                    prop_assert_eq!(&c.stream_id, &client.stream_id);
                }
            }
        }

        /// `verify_replay` accepts exactly `after+1..=upto`.
        #[test]
        fn verify_replay_accepts_exactly_the_range(after in 0u64..50, len in 0u64..20, serials in prop::collection::vec(0u64..80, 0..25)) {
            let upto = after + len;
            let exact: Vec<u64> = ((after + 1)..=upto).collect();
            prop_assert_eq!(verify_replay(after, upto, &exact), Ok(()));
            prop_assert_eq!(verify_replay(after, upto, &serials).is_ok(), serials == exact);
        }

        /// Any single corruption of a correct replay (gap, duplicate, reorder, shift) is rejected.
        #[test]
        fn verify_replay_rejects_corruption(after in 0u64..1000, len in 1u64..30, kind in 0u8..4, i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>()) {
            let upto = after + len;
            let mut v: Vec<u64> = ((after + 1)..=upto).collect();
            let n = v.len();
            match kind {
                0 => { v.remove(i.index(n)); }
                1 => { let x = v[i.index(n)]; v.insert(j.index(n + 1), x); }
                2 => {
                    prop_assume!(n >= 2);
                    let (a, b) = (i.index(n), j.index(n));
                    prop_assume!(a != b);
                    v.swap(a, b);
                }
                _ => { for s in &mut v { *s += 1; } }
            }
            prop_assert_eq!(verify_replay(after, upto, &v), Err(FailureCode::ContinuityUnverifiable));
        }

        /// `merge_held` output is strictly increasing from upto+1 without gaps and loses no
        /// serial beyond `upto` (first held copy wins), or it is an error exactly when the held
        /// serials beyond `upto` are not such a run.
        #[test]
        fn merge_held_is_contiguous_or_err(upto in 0u64..20, held in prop::collection::vec((0u64..35, any::<u16>()), 0..30)) {
            let distinct: BTreeSet<u64> = held.iter().map(|(s, _)| *s).filter(|s| *s > upto).collect();
            let contiguous = distinct.iter().enumerate().all(|(k, s)| *s == upto + 1 + k as u64);
            match merge_held(upto, held.clone()) {
                Ok(out) => {
                    prop_assert!(contiguous);
                    for (k, (s, payload)) in out.iter().enumerate() {
                        prop_assert_eq!(*s, upto + 1 + k as u64);
                        let first = held.iter().find(|(h, _)| h == s).map(|(_, p)| *p);
                        prop_assert_eq!(Some(*payload), first);
                    }
                    prop_assert_eq!(out.len(), distinct.len());
                }
                Err(c) => {
                    prop_assert_eq!(c, FailureCode::ContinuityUnverifiable);
                    prop_assert!(!contiguous);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Model test: a small simulator of one channel, one node and one client.

    #[derive(Debug, Clone)]
    enum Step {
        Publish,
        Trim(u8),
        Reset,
        KillNode,
        StoreDown,
        StoreUp,
        Disconnect,
        ResumeStart,
        ResumeFinish,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => Just(Step::Publish),
            1 => (0u8..10).prop_map(Step::Trim),
            1 => Just(Step::Reset),
            1 => Just(Step::KillNode),
            1 => Just(Step::StoreDown),
            2 => Just(Step::StoreUp),
            2 => Just(Step::Disconnect),
            3 => Just(Step::ResumeStart),
            3 => Just(Step::ResumeFinish),
        ]
    }

    #[derive(Debug)]
    struct Resuming {
        decision: Decision,
        /// Live frames held during the replay: (serial, generation).
        held: Vec<(u64, u32)>,
    }

    #[derive(Debug)]
    struct Sim {
        durable: bool,
        store_up: bool,
        generation: u32,
        head: u64,
        cold_oldest: u64,
        hot: Option<(u32, VecDeque<u64>)>,
        hot_cap: usize,
        /// The client's stored position (generation, serial).
        client: (u32, u64),
        connected: bool,
        resuming: Option<Resuming>,
        successes: usize,
    }

    impl Sim {
        fn new(durable: bool, hot_cap: usize) -> Self {
            Sim {
                durable,
                store_up: true,
                generation: 0,
                head: 0,
                cold_oldest: 1,
                hot: None,
                hot_cap,
                client: (0, 0),
                connected: true,
                resuming: None,
                successes: 0,
            }
        }

        fn cold_view(&self) -> TierView {
            view(
                &sid(self.generation),
                self.head,
                (self.cold_oldest <= self.head).then_some(self.cold_oldest),
            )
        }

        fn hot_view(&self) -> Option<TierView> {
            let (g, items) = self.hot.as_ref()?;
            Some(view(&sid(*g), *items.back()?, items.front().copied()))
        }

        /// The client receives one message; it must extend its position by exactly one, or
        /// (live only) start a new stream.
        fn receive(&mut self, generation: u32, serial: u64, live: bool) {
            if live && generation != self.client.0 {
                assert_eq!(serial, 1, "a new stream starts at serial 1");
            } else {
                assert_eq!(
                    (generation, serial),
                    (self.client.0, self.client.1 + 1),
                    "skip or duplicate"
                );
            }
            self.client = (generation, serial);
        }

        /// A failed resume: the client resubscribes at the current head.
        fn resubscribe(&mut self) {
            self.client = (self.generation, self.head);
        }

        fn run(&mut self, s: &Step) {
            match s {
                Step::Publish => {
                    if self.durable && !self.store_up {
                        return; // Fail closed: no serial without the store.
                    }
                    self.head += 1;
                    let g = self.generation;
                    let hot = self.hot.get_or_insert_with(|| (g, VecDeque::new()));
                    if hot.0 != g {
                        *hot = (g, VecDeque::new());
                    }
                    hot.1.push_back(self.head);
                    while hot.1.len() > self.hot_cap {
                        hot.1.pop_front();
                    }
                    if !self.connected {
                        return;
                    }
                    if let Some(r) = &mut self.resuming {
                        r.held.push((self.head, g));
                    } else {
                        self.receive(g, self.head, true);
                    }
                }
                Step::Trim(keep) => {
                    self.cold_oldest = self
                        .cold_oldest
                        .max((self.head + 1).saturating_sub(u64::from(*keep)));
                }
                Step::Reset => {
                    self.generation += 1;
                    self.head = 0;
                    self.cold_oldest = 1;
                }
                Step::KillNode => {
                    self.hot = None;
                    self.connected = false;
                    self.resuming = None;
                    if !self.durable {
                        // Without a durable store the stream itself lived on the node.
                        self.generation += 1;
                        self.head = 0;
                        self.cold_oldest = 1;
                    }
                }
                Step::StoreDown => self.store_up = false,
                Step::StoreUp => self.store_up = true,
                Step::Disconnect => {
                    self.connected = false;
                    self.resuming = None;
                }
                Step::ResumeStart => {
                    if self.connected {
                        return;
                    }
                    self.connected = true;
                    let hot = self.hot_view();
                    let cold = self.cold_view();
                    let cold_arg = if !self.durable {
                        Ok(None)
                    } else if self.store_up {
                        Ok(Some(&cold))
                    } else {
                        Err(())
                    };
                    let upto = match cold_arg {
                        Ok(Some(c)) => c.head,
                        _ => hot.as_ref().map_or(0, |h| h.head),
                    };
                    let client = pos(&sid(self.client.0), self.client.1);
                    let decision = decide(&client, hot.as_ref(), cold_arg, upto);
                    if decision.failure_code().is_some() {
                        self.resubscribe();
                        return;
                    }
                    // The decision is backed by what the chosen tier holds right now.
                    if let Decision::Recover {
                        source,
                        after,
                        upto,
                    } = &decision
                    {
                        let g = self.client.0;
                        for s in (after + 1)..=*upto {
                            let held = match source {
                                Tier::Hot => self
                                    .hot
                                    .as_ref()
                                    .is_some_and(|(hg, items)| *hg == g && items.contains(&s)),
                                Tier::Cold => {
                                    self.durable
                                        && self.store_up
                                        && self.generation == g
                                        && s >= self.cold_oldest
                                        && s <= self.head
                                }
                            };
                            assert!(
                                held,
                                "recovering serial {s} from {source} which does not hold it"
                            );
                        }
                    }
                    self.resuming = Some(Resuming {
                        decision,
                        held: Vec::new(),
                    });
                }
                Step::ResumeFinish => {
                    let Some(r) = self.resuming.take() else {
                        return;
                    };
                    let Decision::Recover {
                        source,
                        after,
                        upto,
                    } = r.decision
                    else {
                        return;
                    };
                    let g = self.client.0;
                    assert_eq!(after, self.client.1);
                    // Fetch (after, upto] from the chosen tier now: it may have been trimmed
                    // meanwhile, which the verification must catch.
                    let fetched: Option<Vec<u64>> = match source {
                        Tier::Hot => {
                            self.hot
                                .as_ref()
                                .filter(|(hg, _)| *hg == g)
                                .map(|(_, items)| {
                                    items
                                        .iter()
                                        .copied()
                                        .filter(|s| *s > after && *s <= upto)
                                        .collect()
                                })
                        }
                        Tier::Cold => (self.store_up && self.generation == g)
                            .then(|| (after + 1).max(self.cold_oldest)..=upto.min(self.head))
                            .map(|r| r.collect()),
                    };
                    let Some(fetched) = fetched.filter(|f| verify_replay(after, upto, f).is_ok())
                    else {
                        self.resubscribe();
                        return;
                    };
                    // Held frames of another stream cannot be merged by serial.
                    if r.held.iter().any(|(_, hg)| *hg != g) {
                        self.resubscribe();
                        return;
                    }
                    let Ok(merged) = merge_held(upto, r.held) else {
                        self.resubscribe();
                        return;
                    };
                    for s in fetched {
                        self.receive(g, s, false);
                    }
                    for (s, hg) in merged {
                        self.receive(hg, s, false);
                    }
                    // Caught up: nothing published in this stream was skipped.
                    if g == self.generation {
                        assert_eq!(self.client.1, self.head, "resume ended behind the head");
                    }
                    self.successes += 1;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Random interleavings never make a client skip or duplicate a serial.
        #[test]
        fn model_resume_never_skips_or_duplicates(durable in any::<bool>(), hot_cap in 1usize..10, steps in prop::collection::vec(step(), 0..120)) {
            let mut sim = Sim::new(durable, hot_cap);
            for s in &steps {
                sim.run(s);
            }
        }
    }

    /// The simulator does reach successful resumes from both tiers (the model test is not
    /// vacuous).
    #[test]
    fn model_reaches_successful_resumes() {
        for (durable, source) in [(true, Tier::Cold), (true, Tier::Hot), (false, Tier::Hot)] {
            let mut sim = Sim::new(durable, if source == Tier::Cold { 1 } else { 8 });
            for s in [
                Step::Publish,
                Step::Disconnect,
                Step::Publish,
                Step::Publish,
                Step::ResumeStart,
            ] {
                sim.run(&s);
            }
            assert!(
                matches!(sim.resuming, Some(Resuming { decision: Decision::Recover { source: got, .. }, .. }) if got == source)
            );
            sim.run(&Step::Publish);
            sim.run(&Step::ResumeFinish);
            assert_eq!(sim.successes, 1);
            assert_eq!(sim.client, (0, 4));
        }
    }
}
