//! Property tests of the gap state machine, run through the same pipeline as the connection
//! task: message-id check on arrival, [`Continuity`], message-id record on delivery.
//!
//! Safety, for any sequence of frames, withheld markers, answers, heads, reconnects and
//! clock ticks: per stream the delivered serials strictly increase, nothing is delivered
//! twice, and every discontinuity between two delivered frames has a `RecoveryFailed`
//! between them, unless the skipped serials were all announced as withheld (so a serial is
//! delivered, withheld, or covered by a failure). Against a server that answers every resume
//! from its history: everything not withheld is delivered, in order, and a `RecoveryFailed`
//! appears only when the history really lost a serial; on an ordered connection the
//! client's own (withheld) messages never come back, even though its history replays them.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;

use super::tests::msg_on;
use super::*;
use crate::dedup::{DedupConfig, DedupWindow};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Pipeline {
    machine: Continuity,
    budget: HoldBudget,
    dedup: DedupWindow,
    now: Instant,
    out: Vec<ChannelEvent>,
    /// Withheld markers fed, each with `out.len()` at that moment.
    withheld: Vec<(usize, String, u64)>,
    /// Resumes asked for and not answered yet, oldest first.
    requests: VecDeque<Position>,
}

impl Pipeline {
    fn new(limits: GapLimits) -> Self {
        let budget = HoldBudget::new(limits);
        let now = Instant::now();
        let mut machine = Continuity::new("c", budget.clone(), TIMEOUT);
        machine.attach(Position::new("s0", 0), now);
        Pipeline {
            machine,
            budget,
            dedup: DedupWindow::new(DedupConfig {
                capacity: 1 << 20,
                max_age: Duration::from_secs(1 << 20),
            }),
            now,
            out: Vec::new(),
            withheld: Vec::new(),
            requests: VecDeque::new(),
        }
    }

    fn apply(&mut self, outcome: Option<Outcome>) {
        let Some(outcome) = outcome else { return };
        self.requests.extend(outcome.resume_from);
        for event in outcome.events {
            if let ChannelEvent::Message(m) = &event {
                if let Some(id) = &m.message_id {
                    if !self.dedup.admit(id, self.now) {
                        continue;
                    }
                }
            }
            self.out.push(event);
        }
    }

    fn frame(&mut self, message: Message) {
        if let Some(id) = &message.message_id {
            if self.dedup.is_duplicate(id, self.now) {
                return;
            }
        }
        let outcome = self.machine.on_message(message, self.now);
        self.apply(Some(outcome));
    }

    /// `sockudo_internal:position` (no message id, so no dedup check).
    fn marker(&mut self, stream: &str, serial: u64) {
        self.withheld
            .push((self.out.len(), stream.to_owned(), serial));
        let outcome = self
            .machine
            .on_position(Position::new(stream, serial), self.now);
        self.apply(Some(outcome));
    }

    fn check(&self) -> Result<(), TestCaseError> {
        check_safety(&self.out, &self.withheld)
    }

    fn recovered(&mut self, serial: u64) {
        let stream = self
            .machine
            .position()
            .map_or_else(|| "s0".to_owned(), |p| p.stream_id.clone());
        let r = Recovered {
            channel: "c".into(),
            source: crate::RecoverySource::Hot,
            replayed: 0,
            position: Position::new(stream, serial),
        };
        let outcome = self.machine.on_recovered(&r, self.now);
        self.apply(outcome);
    }

    fn failed(&mut self, bare: bool) {
        let f = RecoveryFailure::client_side(
            "c",
            crate::RecoveryCode::PositionExpired,
            "history lost it",
        );
        let outcome = if bare {
            self.machine.on_failed(f, self.now)
        } else {
            self.machine.on_answer_failed(f, self.now)
        };
        self.apply(outcome);
    }

    fn tick(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        let outcome = self.machine.check_timeout(self.now);
        self.apply(outcome);
    }

    /// Let every timer run out.
    fn settle(&mut self) {
        self.tick(TIMEOUT.as_secs() * 3);
        assert_eq!(
            self.machine.held(),
            0,
            "nothing stays held once the timers ran out"
        );
        assert_eq!(self.budget.used(), 0);
    }

    fn delivered(&self) -> Vec<u64> {
        self.out
            .iter()
            .filter_map(|e| match e {
                ChannelEvent::Message(m) => m.serial,
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> usize {
        self.out
            .iter()
            .filter(|e| matches!(e, ChannelEvent::RecoveryFailed(_)))
            .count()
    }
}

/// The safety properties of a delivered sequence that started at `s0/0`; `withheld` lists
/// the markers fed, each with the number of events delivered before it.
fn check_safety(
    events: &[ChannelEvent],
    withheld: &[(usize, String, u64)],
) -> Result<(), TestCaseError> {
    let mut prev = ("s0".to_owned(), 0u64);
    let mut covered = false;
    let mut ids = HashSet::new();
    let mut top: HashMap<String, u64> = HashMap::new();
    let mut announced: HashSet<(&str, u64)> = HashSet::new();
    let mut markers = withheld.iter().peekable();
    for (i, event) in events.iter().enumerate() {
        while let Some((_, stream, serial)) = markers.next_if(|(at, _, _)| *at <= i) {
            announced.insert((stream.as_str(), *serial));
        }
        match event {
            ChannelEvent::RecoveryFailed(_) => covered = true,
            ChannelEvent::Message(m) => {
                prop_assert!(ids.insert(m.message_id.clone()), "{m:?} delivered twice");
                let (Some(stream), Some(serial)) = (m.stream_id.clone(), m.serial) else {
                    continue;
                };
                let highest = top.entry(stream.clone()).or_default();
                prop_assert!(
                    serial > *highest,
                    "{stream}/{serial} after {stream}/{highest}"
                );
                *highest = serial;
                // Skipping serials is fine only when each was announced as withheld.
                let contiguous = prev.0 == stream
                    && serial > prev.1
                    && (prev.1 + 1..serial).all(|s| announced.contains(&(stream.as_str(), s)));
                prop_assert!(
                    contiguous || covered,
                    "silent discontinuity: {prev:?} then {stream}/{serial}"
                );
                prev = (stream, serial);
                covered = false;
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    /// A frame of stream `s{0}`, `{1}` serials after the highest sent on it so far.
    Frame(u8, i8),
    /// A withheld marker, placed like a frame.
    Withheld(u8, i8),
    Recovered(u64),
    AnswerFailed,
    Failed,
    Attach(u8, u64),
    Tick(u64),
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    let step = prop_oneof![6 => Just(1i8), 2 => 2i8..5, 2 => -3i8..1];
    prop_oneof![
        16 => (stream.clone(), step.clone()).prop_map(|(s, d)| Op::Frame(s, d)),
        4 => (stream, step).prop_map(|(s, d)| Op::Withheld(s, d)),
        2 => (0u64..60).prop_map(Op::Recovered),
        1 => Just(Op::AnswerFailed),
        1 => Just(Op::Failed),
        1 => (0u8..3, 0u64..60).prop_map(|(s, n)| Op::Attach(s, n)),
        1 => (0u64..12).prop_map(Op::Tick),
        1 => Just(Op::Reconnect),
    ]
}

/// What the network does to each serial the server sends live.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Send,
    Drop,
    /// Dropped, and the history does not have it either.
    Lost,
    Twice,
    /// The connection's own message: a marker goes out live; the history has the message.
    Withheld,
}

fn fate(lossy_history: bool) -> BoxedStrategy<Fate> {
    if lossy_history {
        prop_oneof![10 => Just(Fate::Send), 2 => Just(Fate::Drop), 1 => Just(Fate::Lost), 1 => Just(Fate::Twice), 2 => Just(Fate::Withheld)].boxed()
    } else {
        prop_oneof![10 => Just(Fate::Send), 2 => Just(Fate::Drop), 1 => Just(Fate::Twice), 2 => Just(Fate::Withheld)].boxed()
    }
}

/// The serials of `fates` that are the connection's own (all but the last, which is sent).
fn own(fates: &[Fate]) -> HashSet<u64> {
    (1..fates.len() as u64)
        .filter(|s| matches!(fates[*s as usize - 1], Fate::Withheld))
        .collect()
}

/// A server that sends serials `1..=fates.len()` live through a lossy, reordering network and
/// answers each resume `delay` frames later from its history: the replay of everything after
/// the client's position, or a failure when the history lost a serial in that range.
fn run_with_server(fates: &[Fate], swaps: &[usize], delays: &[usize]) -> Pipeline {
    let n = fates.len() as u64;
    // (serial, is a withheld marker)
    let mut wire: Vec<(u64, bool)> = Vec::new();
    for (i, f) in fates.iter().enumerate() {
        let serial = i as u64 + 1;
        match f {
            _ if serial == n => wire.push((serial, false)), // the last one arrives: no silent tail
            Fate::Send => wire.push((serial, false)),
            Fate::Twice => wire.extend([(serial, false), (serial, false)]),
            Fate::Withheld => wire.push((serial, true)),
            Fate::Drop | Fate::Lost => {}
        }
    }
    for &i in swaps {
        if i + 1 < wire.len() {
            wire.swap(i, i + 1);
        }
    }
    let lost = |s: u64| matches!(fates.get(s as usize - 1), Some(Fate::Lost)) && s != n;
    let mut p = Pipeline::new(GapLimits::default());
    let mut pending: VecDeque<(usize, Position)> = VecDeque::new();
    let mut head = 0;
    let mut delay = delays.iter().copied().cycle();
    let answer = |p: &mut Pipeline, from: Position, head: u64| {
        if (from.serial + 1..=head).any(lost) {
            p.failed(true);
            p.failed(false);
        } else {
            // The history has the connection's own messages too.
            for s in from.serial + 1..=head {
                p.frame(msg_on("s0", s));
            }
            p.recovered(head);
        }
    };
    for (step, &(serial, marker)) in wire.iter().enumerate() {
        head = head.max(serial);
        if marker {
            p.marker("s0", serial);
        } else {
            p.frame(msg_on("s0", serial));
        }
        while let Some(from) = p.requests.pop_front() {
            pending.push_back((step + delay.next().unwrap_or(0), from));
        }
        while pending.front().is_some_and(|(due, _)| *due <= step) {
            if let Some((_, from)) = pending.pop_front() {
                answer(&mut p, from, head);
            }
        }
    }
    for _ in 0..1000 {
        let Some((_, from)) = pending
            .pop_front()
            .or_else(|| p.requests.pop_front().map(|r| (0, r)))
        else {
            break;
        };
        answer(&mut p, from, head);
    }
    p.settle();
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_input_never_yields_a_silent_gap(ops in prop::collection::vec(op(), 0..120)) {
        let mut p = Pipeline::new(GapLimits { per_channel: 6, total: 1000 });
        let mut sent = [0u64; 3];
        for op in ops {
            match op {
                Op::Frame(s, step) | Op::Withheld(s, step) => {
                    let top = &mut sent[usize::from(s)];
                    let serial = top.saturating_add_signed(i64::from(step)).max(1);
                    *top = (*top).max(serial);
                    if matches!(op, Op::Frame(..)) {
                        p.frame(msg_on(&format!("s{s}"), serial));
                    } else {
                        p.marker(&format!("s{s}"), serial);
                    }
                }
                Op::Recovered(serial) => p.recovered(serial),
                Op::AnswerFailed => p.failed(false),
                Op::Failed => p.failed(true),
                Op::Attach(s, serial) => {
                    let outcome = p.machine.attach(Position::new(format!("s{s}"), serial), p.now);
                    p.apply(Some(outcome));
                }
                Op::Tick(secs) => p.tick(secs),
                Op::Reconnect => {
                    p.requests.clear();
                    let from = p.machine.begin_resume(p.now);
                    p.requests.extend(from);
                }
            }
            p.check()?;
        }
        p.settle();
        p.check()?;
    }

    #[test]
    fn a_server_with_full_history_makes_every_gap_invisible(
        fates in prop::collection::vec(fate(false), 1..80),
        swaps in prop::collection::vec(0usize..100, 0..20),
        delays in prop::collection::vec(0usize..6, 1..8),
    ) {
        let p = run_with_server(&fates, &swaps, &delays);
        p.check()?;
        // Reordering can bring a replay of an own message before its marker: that copy
        // may be delivered (once, in order); everything else must be.
        let own = own(&fates);
        let others: Vec<u64> = p.delivered().into_iter().filter(|s| !own.contains(s)).collect();
        let all: Vec<u64> = (1..=fates.len() as u64).filter(|s| !own.contains(s)).collect();
        prop_assert_eq!(others, all);
        prop_assert_eq!(p.failures(), 0);
    }

    #[test]
    fn on_an_ordered_connection_the_own_messages_never_come_back(
        fates in prop::collection::vec(fate(false), 1..80),
        delays in prop::collection::vec(0usize..6, 1..8),
    ) {
        let p = run_with_server(&fates, &[], &delays);
        p.check()?;
        let own = own(&fates);
        let all: Vec<u64> = (1..=fates.len() as u64).filter(|s| !own.contains(s)).collect();
        prop_assert_eq!(p.delivered(), all);
        prop_assert_eq!(p.failures(), 0);
    }

    #[test]
    fn a_server_that_lost_history_is_reported_never_skipped(
        fates in prop::collection::vec(fate(true), 1..80),
        swaps in prop::collection::vec(0usize..100, 0..20),
        delays in prop::collection::vec(0usize..6, 1..8),
    ) {
        let p = run_with_server(&fates, &swaps, &delays);
        p.check()?;
        let n = fates.len() as u64;
        prop_assert_eq!(p.delivered().last().copied(), Some(n), "the last serial arrives");
        let lost = fates.iter().take(fates.len() - 1).any(|f| matches!(f, Fate::Lost));
        prop_assert_eq!(p.failures() > 0, lost);
    }
}
