//! V2 resume on the wire: building `sockudo:resume` and reading its answers.
//!
//! The client sends one `sockudo:resume` with every channel's position right behind its
//! subscribes after a reconnect, and one for a single channel when a live gap opens. The
//! server may answer channel by channel: several `resume_success` frames (each listing some
//! channels as `recovered` or `failed`) and bare per-channel `resume_failed` frames, in any
//! order relative to other channels' `subscription_succeeded`. What an answer means for a
//! channel is decided by its [`Continuity`](crate::continuity::Continuity).

use serde::Deserialize;
use serde_json::Value;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::OutboundFrame;

use crate::event::RecoveryFailure;
use crate::positions::Position;
use crate::recovery_code::{RecoveryCode, RecoverySource};

/// Event name (without family prefix) of the resume request and its answers.
pub const RESUME: &str = "resume";
/// V2 event name of the resume answer.
pub const RESUME_SUCCESS: &str = "resume_success";
/// V2 event name of a channel's resume failure.
pub const RESUME_FAILED: &str = "resume_failed";

/// Client-side failure code when no verdict arrived in time.
pub const CODE_RESUME_TIMEOUT: RecoveryCode = RecoveryCode::ResumeTimeout;

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
    /// The channel resumed.
    pub channel: String,
    /// Where the replay came from.
    #[serde(default)]
    pub source: RecoverySource,
    /// How many messages were replayed.
    #[serde(default)]
    pub replayed: u64,
    /// The channel's position after the replay.
    pub position: Position,
}

/// The data of `sockudo:resume_success`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeSuccess {
    /// Channels whose continuity was proven.
    pub recovered: Vec<Recovered>,
    /// Channels that failed.
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
            RecoveryCode::ContinuityUnverifiable,
            "listed as failed by the server",
        ));
    }
    let d: FailureData = serde_json::from_value(data.clone()).ok()?;
    let channel = d.channel.or_else(|| frame_channel.map(str::to_owned))?;
    Some(RecoveryFailure {
        channel,
        code: d.code.map_or(RecoveryCode::ContinuityUnverifiable, |c| {
            RecoveryCode::parse(&c)
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
