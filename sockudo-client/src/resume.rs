//! V2 resume: building `sockudo:resume`, reading its answers, and the per-channel gate that
//! enforces "fail closed".
//!
//! After a reconnect every channel with a stored position is put behind a [`RecoveryGate`].
//! While the gate waits for the server's verdict, everything that arrives for the channel
//! (replayed and live events alike) is held back. A success releases a `Recovered` marker and
//! then the held events in stream order; a failure releases `RecoveryFailed` **first** and
//! only then the held (live) events. Without a verdict nothing is ever presented as
//! recovered. Pure logic: the connection task feeds it frames and the clock.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::OutboundFrame;

use crate::event::{ChannelEvent, Message, RecoveryFailure};
use crate::positions::Position;

/// Event name (without family prefix) of the resume request and its answers.
pub const RESUME: &str = "resume";
pub const RESUME_SUCCESS: &str = "resume_success";
pub const RESUME_FAILED: &str = "resume_failed";

/// Client-side failure code when no verdict arrived in time.
pub const CODE_RESUME_TIMEOUT: &str = "resume_timeout";

/// The `sockudo:resume` frame for `positions`, or `None` when there is nothing to resume.
pub fn resume_frame<'a>(
    family: Family,
    positions: impl IntoIterator<Item = (&'a str, &'a Position)>,
) -> Option<String> {
    let map: serde_json::Map<String, Value> = positions
        .into_iter()
        .filter_map(|(channel, pos)| {
            serde_json::to_value(pos)
                .ok()
                .map(|v| (channel.to_owned(), v))
        })
        .collect();
    if map.is_empty() {
        return None;
    }
    let data = serde_json::json!({ "channel_positions": map }).to_string();
    Some(OutboundFrame::system(family, RESUME, None, &data))
}

/// One channel of `resume_success.recovered`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Recovered {
    pub channel: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub replayed: u64,
    pub position: Position,
}

/// The data of `sockudo:resume_success`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeSuccess {
    pub recovered: Vec<Recovered>,
    pub failed: Vec<RecoveryFailure>,
}

#[derive(Deserialize)]
struct FailureData {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expected_stream_id: Option<String>,
    #[serde(default)]
    current_stream_id: Option<String>,
    #[serde(default)]
    oldest_available_serial: Option<u64>,
    #[serde(default)]
    newest_available_serial: Option<u64>,
}

/// Parse `resume_failed` data; the channel may be on the frame, in `data`, or both.
pub fn parse_failure(frame_channel: Option<&str>, data: &Value) -> Option<RecoveryFailure> {
    if let Value::String(channel) = data {
        // A bare channel name (as a `failed` list item may be).
        return Some(RecoveryFailure::client_side(
            channel,
            "continuity_unverifiable",
            "listed as failed by the server",
        ));
    }
    let d: FailureData = serde_json::from_value(data.clone()).ok()?;
    let channel = d.channel.or_else(|| frame_channel.map(str::to_owned))?;
    Some(RecoveryFailure {
        channel,
        code: d
            .code
            .unwrap_or_else(|| "continuity_unverifiable".to_owned()),
        reason: d.reason,
        expected_stream_id: d.expected_stream_id,
        current_stream_id: d.current_stream_id,
        oldest_available_serial: d.oldest_available_serial,
        newest_available_serial: d.newest_available_serial,
    })
}

/// Parse `resume_success` data. Malformed entries are skipped: their channels then get no
/// verdict here and fail closed on timeout.
pub fn parse_success(data: &Value) -> ResumeSuccess {
    let recovered = data
        .get("recovered")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| serde_json::from_value::<Recovered>(i.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let failed = data
        .get("failed")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| parse_failure(None, i))
                .collect()
        })
        .unwrap_or_default();
    ResumeSuccess { recovered, failed }
}

/// What a resolved gate hands back: events to deliver in this order, and the position the
/// channel continues from (before the released messages advance it).
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub events: Vec<ChannelEvent>,
    pub position: Option<Position>,
}

#[derive(Debug, Clone)]
enum GateState {
    Live,
    Awaiting {
        since: Instant,
        held: Vec<Message>,
        attach: Option<Position>,
        previous: Option<Position>,
    },
}

/// The fail-closed gate of one channel.
#[derive(Debug, Clone)]
pub struct RecoveryGate {
    state: GateState,
}

impl Default for RecoveryGate {
    fn default() -> Self {
        RecoveryGate {
            state: GateState::Live,
        }
    }
}

impl RecoveryGate {
    /// Start waiting for a verdict on a resume from `previous`.
    pub fn begin(&mut self, previous: Option<Position>, now: Instant) {
        self.state = GateState::Awaiting {
            since: now,
            held: Vec::new(),
            attach: None,
            previous,
        };
    }

    pub fn is_awaiting(&self) -> bool {
        matches!(self.state, GateState::Awaiting { .. })
    }

    /// Pass a message through: `Some` to deliver now, `None` when held.
    pub fn admit(&mut self, message: Message) -> Option<Message> {
        match &mut self.state {
            GateState::Live => Some(message),
            GateState::Awaiting { held, .. } => {
                held.push(message);
                None
            }
        }
    }

    /// Record the subscription head seen while waiting (the fallback position on failure).
    /// Returns false when the gate is live (the caller applies the position itself).
    pub fn attach(&mut self, position: Position) -> bool {
        match &mut self.state {
            GateState::Live => false,
            GateState::Awaiting { attach, .. } => {
                *attach = Some(position);
                true
            }
        }
    }

    /// The server proved continuity: `Recovered`, then the held events in stream order
    /// (anything at or before the pre-disconnect position is dropped as already seen).
    pub fn succeed(&mut self, recovered: &Recovered) -> Option<Release> {
        let GateState::Awaiting {
            mut held, previous, ..
        } = std::mem::replace(&mut self.state, GateState::Live)
        else {
            return None;
        };
        held.sort_by_key(|m| m.serial);
        let mut events = vec![ChannelEvent::Recovered {
            source: recovered.source.clone(),
            replayed: recovered.replayed,
        }];
        events.extend(
            held.into_iter()
                .filter(|m| !already_seen(previous.as_ref(), m))
                .map(ChannelEvent::Message),
        );
        Some(Release {
            events,
            position: Some(recovered.position.clone()),
        })
    }

    /// The server (or the clock) refused continuity: `RecoveryFailed` first, then the held
    /// live events. The channel continues from the subscription head.
    pub fn fail(&mut self, failure: RecoveryFailure) -> Option<Release> {
        let GateState::Awaiting {
            mut held,
            attach,
            previous,
            ..
        } = std::mem::replace(&mut self.state, GateState::Live)
        else {
            return None;
        };
        held.sort_by_key(|m| m.serial);
        let mut events = vec![ChannelEvent::RecoveryFailed(failure)];
        events.extend(
            held.into_iter()
                .filter(|m| !already_seen(previous.as_ref(), m))
                .map(ChannelEvent::Message),
        );
        Some(Release {
            events,
            position: attach,
        })
    }

    /// Whether the verdict is overdue at `now`.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> bool {
        matches!(&self.state, GateState::Awaiting { since, .. } if now.saturating_duration_since(*since) >= timeout)
    }

    /// When the verdict becomes overdue (`None` when not waiting).
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match &self.state {
            GateState::Awaiting { since, .. } => Some(*since + timeout),
            GateState::Live => None,
        }
    }

    /// The connection dropped while waiting: forget the held events (they will be replayed
    /// or reported by the next resume, which starts from the unchanged position).
    pub fn abandon(&mut self) {
        self.state = GateState::Live;
    }
}

fn already_seen(previous: Option<&Position>, m: &Message) -> bool {
    match (previous, m.stream_id.as_deref(), m.serial) {
        (Some(p), Some(stream), Some(serial)) => p.stream_id == stream && serial <= p.serial,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(serial: u64) -> Message {
        Message {
            channel: "c".into(),
            event: "e".into(),
            data: Value::Null,
            user_id: None,
            message_id: Some(format!("m{serial}")),
            serial: Some(serial),
            stream_id: Some("s1".into()),
            extras: None,
        }
    }

    fn serials(events: &[ChannelEvent]) -> Vec<Option<u64>> {
        events
            .iter()
            .map(|e| match e {
                ChannelEvent::Message(m) => m.serial,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn builds_resume_frame() {
        let mut pos = Position::new("s1", 7);
        pos.last_message_id = Some("m7".into());
        let frame = resume_frame(Family::Sockudo, [("chat", &pos)]).unwrap_or_default();
        let v: Value = serde_json::from_str(&frame).unwrap_or_default();
        assert_eq!(v["event"], "sockudo:resume");
        let data: Value =
            serde_json::from_str(v["data"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(
            data["channel_positions"]["chat"],
            serde_json::json!({"serial":7,"stream_id":"s1","last_message_id":"m7"})
        );
        assert!(resume_frame(Family::Sockudo, std::iter::empty()).is_none());
    }

    #[test]
    fn parses_both_answers() {
        let ok = parse_success(&serde_json::json!({
            "recovered": [{"channel":"a","source":"hot","replayed":2,"position":{"stream_id":"s","serial":9,"last_message_id":"m9"}}],
            "failed": [{"channel":"b","code":"stream_reset","reason":"new stream"}, "c"]
        }));
        assert_eq!(ok.recovered.len(), 1);
        assert_eq!(ok.recovered[0].position.serial, 9);
        assert_eq!(ok.failed.len(), 2);
        assert_eq!(ok.failed[0].code, "stream_reset");
        assert_eq!(ok.failed[1].channel, "c");

        // Channel on the frame only, or in data only.
        let f = parse_failure(
            Some("x"),
            &serde_json::json!({"code":"position_expired","oldest_available_serial":3}),
        );
        assert_eq!(
            f.as_ref().map(|f| (
                f.channel.as_str(),
                f.code.as_str(),
                f.oldest_available_serial
            )),
            Some(("x", "position_expired", Some(3)))
        );
        let f = parse_failure(
            None,
            &serde_json::json!({"channel":"y","code":"stream_reset"}),
        );
        assert_eq!(f.map(|f| f.channel), Some("y".to_owned()));
        assert!(parse_failure(None, &serde_json::json!({"code":"stream_reset"})).is_none());
    }

    #[test]
    fn live_gate_passes_everything() {
        let mut g = RecoveryGate::default();
        assert!(g.admit(msg(1)).is_some());
        assert!(!g.attach(Position::new("s1", 1)));
        assert!(g
            .fail(RecoveryFailure::client_side("c", "x", "y"))
            .is_none());
    }

    #[test]
    fn failure_is_reported_before_any_live_event() {
        let now = Instant::now();
        let mut g = RecoveryGate::default();
        g.begin(Some(Position::new("s1", 5)), now);
        assert!(g.attach(Position::new("s2", 40)));
        assert!(g.admit(msg(41)).is_none(), "held while waiting");
        assert!(g.admit(msg(42)).is_none());
        let failure = RecoveryFailure::client_side("c", "stream_reset", "reset");
        let Some(release) = g.fail(failure.clone()) else {
            panic!("gate was awaiting")
        };
        assert_eq!(release.events[0], ChannelEvent::RecoveryFailed(failure));
        assert_eq!(serials(&release.events[1..]), vec![Some(41), Some(42)]);
        assert_eq!(release.position, Some(Position::new("s2", 40)));
        assert!(!g.is_awaiting());
        assert!(g.admit(msg(43)).is_some());
    }

    #[test]
    fn success_releases_in_stream_order_without_already_seen() {
        let now = Instant::now();
        let mut g = RecoveryGate::default();
        g.begin(Some(Position::new("s1", 5)), now);
        for s in [8, 5, 6, 7] {
            assert!(g.admit(msg(s)).is_none());
        }
        let recovered = Recovered {
            channel: "c".into(),
            source: "hot".into(),
            replayed: 3,
            position: Position::new("s1", 8),
        };
        let Some(release) = g.succeed(&recovered) else {
            panic!("gate was awaiting")
        };
        assert_eq!(
            release.events[0],
            ChannelEvent::Recovered {
                source: "hot".into(),
                replayed: 3
            }
        );
        assert_eq!(
            serials(&release.events[1..]),
            vec![Some(6), Some(7), Some(8)]
        );
        assert_eq!(release.position, Some(Position::new("s1", 8)));
    }

    #[test]
    fn timeout_and_abandon() {
        let now = Instant::now();
        let mut g = RecoveryGate::default();
        g.begin(None, now);
        assert!(!g.overdue(now + Duration::from_secs(1), Duration::from_secs(5)));
        assert!(g.overdue(now + Duration::from_secs(5), Duration::from_secs(5)));
        g.admit(msg(1));
        g.abandon();
        assert!(!g.is_awaiting());
        assert!(g
            .succeed(&Recovered {
                channel: "c".into(),
                source: String::new(),
                replayed: 0,
                position: Position::new("s", 1)
            })
            .is_none());
    }
}
