//! V2 channel positions: where each channel's stream stands for this client.
//!
//! A position is `(stream_id, serial, last_message_id)`. It is set from
//! `subscription_succeeded` (the head at attach time, so an idle channel can still resume)
//! and advanced by every delivered message. A message from another `stream_id` means the
//! stream was reset: the position follows the new stream. Pure logic.

use serde::{Deserialize, Serialize};

/// Where a channel's stream stands. Serialises as the `sockudo:resume` wire shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The stream generation.
    pub stream_id: String,
    /// The serial of the last message seen.
    pub serial: u64,
    /// The id of that message, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

impl Position {
    /// A position without a message id.
    pub fn new(stream_id: impl Into<String>, serial: u64) -> Self {
        Position {
            stream_id: stream_id.into(),
            serial,
            last_message_id: None,
        }
    }
}

/// How an update related to the stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// First position for the channel.
    Initial,
    /// Same stream, a later serial.
    Forward,
    /// Same stream, a serial at or behind the stored one: position kept.
    Stale,
    /// Another stream id: continuity was lost upstream; the position follows the new stream.
    StreamChanged,
}

/// The position tracker of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelPosition {
    current: Option<Position>,
}

impl ChannelPosition {
    /// The remembered position, if any.
    pub fn get(&self) -> Option<&Position> {
        self.current.as_ref()
    }

    /// Replace the position outright (subscription head, resume_success position).
    pub fn set(&mut self, position: Position) {
        self.current = Some(position);
    }

    /// Apply a message's `stream_id`/`serial`/`message_id`.
    pub fn observe(&mut self, stream_id: &str, serial: u64, message_id: Option<&str>) -> Advance {
        let next = || Position {
            stream_id: stream_id.to_owned(),
            serial,
            last_message_id: message_id.map(str::to_owned),
        };
        match &mut self.current {
            None => {
                self.current = Some(next());
                Advance::Initial
            }
            Some(p) if p.stream_id != stream_id => {
                *p = next();
                Advance::StreamChanged
            }
            Some(p) if serial > p.serial => {
                p.serial = serial;
                p.last_message_id = message_id.map(str::to_owned);
                Advance::Forward
            }
            Some(_) => Advance::Stale,
        }
    }

    /// Forget the position.
    pub fn clear(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_forward_only_within_a_stream() {
        let mut p = ChannelPosition::default();
        assert_eq!(p.observe("s1", 5, Some("m5")), Advance::Initial);
        assert_eq!(p.observe("s1", 6, Some("m6")), Advance::Forward);
        assert_eq!(p.observe("s1", 4, Some("m4")), Advance::Stale);
        assert_eq!(p.observe("s1", 6, Some("m6")), Advance::Stale);
        assert_eq!(
            p.get(),
            Some(&Position {
                stream_id: "s1".into(),
                serial: 6,
                last_message_id: Some("m6".into())
            })
        );
    }

    #[test]
    fn stream_change_replaces_position() {
        let mut p = ChannelPosition::default();
        p.set(Position::new("s1", 100));
        assert_eq!(p.observe("s2", 1, None), Advance::StreamChanged);
        assert_eq!(p.get(), Some(&Position::new("s2", 1)));
    }

    #[test]
    fn wire_shape() {
        let mut pos = Position::new("s1", 7);
        assert_eq!(
            serde_json::to_string(&pos).ok().as_deref(),
            Some(r#"{"stream_id":"s1","serial":7}"#)
        );
        pos.last_message_id = Some("m7".into());
        assert_eq!(
            serde_json::to_string(&pos).ok().as_deref(),
            Some(r#"{"stream_id":"s1","serial":7,"last_message_id":"m7"}"#)
        );
    }
}
