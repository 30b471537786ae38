//! Parsing client frames and encoding server frames.
//!
//! Pusher double-encodes the `data` of system events (`pusher:*`, `pusher_internal:*`): on the
//! wire it is a JSON *string* holding JSON. pusher-js, however, sends `pusher:subscribe` with
//! `data` as an inline object. [`ClientFrame::system_data`] accepts both and the encoders here
//! always emit the string form, so the rule lives in this file only.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::events::{self, Family};

/// Protocol selected by the `protocol` query parameter of the connection URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Pusher protocol 7.
    V1,
    /// Sockudo V2 (`?protocol=2`).
    V2,
}

impl ProtocolVersion {
    /// Parse the `protocol` query value. `None` when it is not a supported version.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "7" => Some(ProtocolVersion::V1),
            "2" => Some(ProtocolVersion::V2),
            _ => None,
        }
    }

    /// The system-event family of this version.
    pub const fn family(self) -> Family {
        match self {
            ProtocolVersion::V1 => Family::Pusher,
            ProtocolVersion::V2 => Family::Sockudo,
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is over the size limit (refused before parsing).
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The frame is not JSON of the expected shape.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// `data` is missing or not what the event needs.
    #[error("missing or invalid `data`: {0}")]
    InvalidData(String),
    /// The event needs a channel and has none.
    #[error("missing `channel`")]
    MissingChannel,
}

/// A frame received from a client.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    /// The event name.
    pub event: String,
    /// The channel, for channel events.
    #[serde(default)]
    pub channel: Option<String>,
    /// The raw `data`.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

impl ClientFrame {
    /// Parse a text frame, refusing it before any JSON work when it is over `max_bytes`.
    pub fn parse(text: &str, max_bytes: usize) -> Result<Self, FrameError> {
        if text.len() > max_bytes {
            return Err(FrameError::TooLarge {
                size: text.len(),
                limit: max_bytes,
            });
        }
        serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))
    }

    /// Decode the `data` of a system event into `T`, accepting both the double-encoded string
    /// form and an inline JSON object.
    pub fn system_data<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        let raw = self
            .data
            .as_deref()
            .ok_or_else(|| FrameError::InvalidData("missing".into()))?;
        let text = raw.get();
        if text.starts_with('"') {
            let inner: String =
                serde_json::from_str(text).map_err(|e| FrameError::InvalidData(e.to_string()))?;
            serde_json::from_str(&inner).map_err(|e| FrameError::InvalidData(e.to_string()))
        } else {
            serde_json::from_str(text).map_err(|e| FrameError::InvalidData(e.to_string()))
        }
    }

    /// The channel of a frame that must carry one.
    pub fn require_channel(&self) -> Result<&str, FrameError> {
        self.channel.as_deref().ok_or(FrameError::MissingChannel)
    }
}

/// `pusher:subscribe` data.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeData {
    /// The channel to subscribe to.
    pub channel: String,
    /// The signature, for private, encrypted and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence only: a JSON *string*; the signature covers its exact bytes.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `pusher:unsubscribe` data.
#[derive(Debug, Clone, Deserialize)]
pub struct UnsubscribeData {
    /// The channel to leave.
    pub channel: String,
}

/// `pusher:signin` data.
#[derive(Debug, Clone, Deserialize)]
pub struct SigninData {
    /// The signature over the socket id and `user_data`.
    pub auth: String,
    /// The signed user data (a JSON string).
    pub user_data: String,
}

/// Presence `channel_data` (decoded from its JSON string).
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceChannelData {
    /// The member's user id.
    pub user_id: UserId,
    /// The member's `user_info`, as sent.
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

/// Signin `user_data` (decoded from its JSON string).
#[derive(Debug, Clone, Deserialize)]
pub struct SigninUserData {
    /// The signed-in user's id.
    pub id: UserId,
}

/// User ids are strings on the wire, but some SDKs send numbers: accept both, keep a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(pub String);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            S(String),
            N(serde_json::Number),
        }
        match Repr::deserialize(d)? {
            Repr::S(s) => Ok(UserId(s)),
            Repr::N(n) => Ok(UserId(n.to_string())),
        }
    }
}

/// Server-to-client frame encoders. Each returns the complete text of one frame.
#[derive(Debug)]
pub struct OutboundFrame;

#[derive(Serialize)]
struct SystemFrame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a str,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    event: &'a str,
    channel: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

#[derive(Serialize)]
struct EventFrameV2<'a> {
    event: &'a str,
    channel: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extras: Option<&'a RawValue>,
}

/// The V2 identity of a broadcast message.
#[derive(Debug, Clone, Copy)]
pub struct MessageMeta<'a> {
    /// The message's stable identity.
    pub message_id: &'a str,
    /// Position in the channel's stream, when history assigns one.
    pub position: Option<(&'a str, u64)>,
    /// Publisher metadata delivered to V2 connections.
    pub extras: Option<&'a RawValue>,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs of strings and raw values cannot fail; fall back to an
    // empty object rather than panic if a future change ever makes it fallible.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

impl OutboundFrame {
    /// A system event (`{family}:{name}`) whose data object is double-encoded.
    pub fn system(family: Family, name: &str, channel: Option<&str>, data: &str) -> String {
        let event = format!("{}{}", family.prefix(), name);
        to_json(&SystemFrame {
            event: &event,
            channel,
            data,
        })
    }

    /// An internal event (`{family}_internal:{name}`), data double-encoded.
    pub fn internal(family: Family, name: &str, channel: Option<&str>, data: &str) -> String {
        let event = format!("{}{}", family.internal_prefix(), name);
        to_json(&SystemFrame {
            event: &event,
            channel,
            data,
        })
    }

    /// `connection_established` with the socket id and activity timeout.
    pub fn connection_established(
        family: Family,
        socket_id: &str,
        activity_timeout: u64,
    ) -> String {
        let data = to_json(&serde_json::json!({
            "socket_id": socket_id,
            "activity_timeout": activity_timeout,
        }));
        Self::system(family, events::CONNECTION_ESTABLISHED, None, &data)
    }

    /// `pusher:error`, with `code` null when the error has no Pusher code.
    pub fn error(family: Family, message: &str, code: Option<u16>) -> String {
        let data = to_json(&serde_json::json!({ "message": message, "code": code }));
        Self::system(family, events::ERROR, None, &data)
    }

    /// A `pong`.
    pub fn pong(family: Family) -> String {
        Self::system(family, events::PONG, None, "{}")
    }

    /// A `ping`.
    pub fn ping(family: Family) -> String {
        Self::system(family, events::PING, None, "{}")
    }

    /// `subscription_succeeded` with `data` (a JSON object text).
    pub fn subscription_succeeded(family: Family, channel: &str, data: &str) -> String {
        Self::internal(family, events::SUBSCRIPTION_SUCCEEDED, Some(channel), data)
    }

    /// V2 `subscription_succeeded` with the stream position also at the top level of the
    /// frame (`stream_id`, `serial`), beside `data`: V2 clients that record a channel's
    /// position from any frame carrying a top-level `serial` (as they do for broadcasts) then
    /// hold a position for an idle channel too, and can resume it on another node.
    pub fn subscription_succeeded_at(
        family: Family,
        channel: &str,
        data: &str,
        stream_id: &str,
        serial: u64,
    ) -> String {
        Self::internal_at(
            family,
            events::SUBSCRIPTION_SUCCEEDED,
            channel,
            data,
            stream_id,
            serial,
        )
    }

    /// V2 `sockudo_internal:position`: the publisher of a message withheld from it (its own
    /// client event, an API publish excluding its socket) learns that `serial` was used, so
    /// the skipped serial is not a gap to it.
    pub fn position(family: Family, channel: &str, stream_id: &str, serial: u64) -> String {
        Self::internal_at(family, events::POSITION, channel, "{}", stream_id, serial)
    }

    /// An internal event with the stream position at the top level of the frame.
    fn internal_at(
        family: Family,
        name: &str,
        channel: &str,
        data: &str,
        stream_id: &str,
        serial: u64,
    ) -> String {
        #[derive(Serialize)]
        struct Positioned<'a> {
            event: &'a str,
            channel: &'a str,
            data: &'a str,
            stream_id: &'a str,
            serial: u64,
        }
        let event = format!("{}{}", family.internal_prefix(), name);
        to_json(&Positioned {
            event: &event,
            channel,
            data,
            stream_id,
            serial,
        })
    }

    /// `subscription_error` for `channel`.
    pub fn subscription_error(
        family: Family,
        channel: &str,
        kind: &str,
        error: &str,
        status: u16,
    ) -> String {
        let data = to_json(&serde_json::json!({ "type": kind, "error": error, "status": status }));
        Self::system(family, events::SUBSCRIPTION_ERROR, Some(channel), &data)
    }

    /// `member_added` on a presence channel.
    pub fn member_added(
        family: Family,
        channel: &str,
        user_id: &str,
        user_info: Option<&RawValue>,
    ) -> String {
        let data = to_json(&serde_json::json!({ "user_id": user_id, "user_info": user_info }));
        Self::internal(family, events::MEMBER_ADDED, Some(channel), &data)
    }

    /// `member_removed` on a presence channel.
    pub fn member_removed(family: Family, channel: &str, user_id: &str) -> String {
        let data = to_json(&serde_json::json!({ "user_id": user_id }));
        Self::internal(family, events::MEMBER_REMOVED, Some(channel), &data)
    }

    /// `signin_success` with the user data.
    pub fn signin_success(family: Family, user_data: &str) -> String {
        let data = to_json(&serde_json::json!({ "user_data": user_data }));
        Self::system(family, events::SIGNIN_SUCCESS, None, &data)
    }

    /// `cache_miss` for a cache channel with nothing cached.
    pub fn cache_miss(family: Family, channel: &str) -> String {
        Self::system(family, events::CACHE_MISS, Some(channel), "{}")
    }

    /// An app or client event as delivered to subscribers. `data` is passed through verbatim
    /// (a JSON string stays a string), which is what the HTTP API and client events need.
    pub fn event(event: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> Bytes {
        Bytes::from(to_json(&EventFrame {
            event,
            channel,
            data,
            user_id,
        }))
    }

    /// The same event for V2 connections: adds `message_id`, and `serial`/`stream_id` when the
    /// message has a stream position, and `extras` when given.
    pub fn event_v2(
        event: &str,
        channel: &str,
        data: &RawValue,
        user_id: Option<&str>,
        meta: MessageMeta<'_>,
    ) -> Bytes {
        let (stream_id, serial) = match meta.position {
            Some((s, n)) => (Some(s), Some(n)),
            None => (None, None),
        };
        Bytes::from(to_json(&EventFrameV2 {
            event,
            channel,
            data,
            user_id,
            message_id: meta.message_id,
            serial,
            stream_id,
            extras: meta.extras,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_data_accepts_string_and_object() {
        let a = ClientFrame::parse(
            r#"{"event":"pusher:subscribe","data":{"channel":"x","auth":"k:s"}}"#,
            1000,
        )
        .unwrap();
        let b = ClientFrame::parse(
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"x\",\"auth\":\"k:s\"}"}"#,
            1000,
        )
        .unwrap();
        let da: SubscribeData = a.system_data().unwrap();
        let db: SubscribeData = b.system_data().unwrap();
        assert_eq!(da.channel, db.channel);
        assert_eq!(da.auth.as_deref(), Some("k:s"));
    }

    #[test]
    fn rejects_oversized_and_bad_json() {
        assert!(matches!(
            ClientFrame::parse("{}", 1),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            ClientFrame::parse("{", 100),
            Err(FrameError::InvalidJson(_))
        ));
        assert!(matches!(
            ClientFrame::parse("[1]", 100),
            Err(FrameError::InvalidJson(_))
        ));
        let no_data = ClientFrame::parse(r#"{"event":"pusher:subscribe"}"#, 100).unwrap();
        assert!(no_data.system_data::<SubscribeData>().is_err());
    }

    #[test]
    fn system_frames_double_encode_data() {
        let f = OutboundFrame::connection_established(Family::Pusher, "1.2", 120);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["event"], "pusher:connection_established");
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(inner["socket_id"], "1.2");
        assert_eq!(inner["activity_timeout"], 120);
    }

    #[test]
    fn event_frames_pass_data_through() {
        let data = RawValue::from_string(r#""{\"a\":1}""#.to_string()).unwrap();
        let f = OutboundFrame::event("my-event", "c", &data, Some("u1"));
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            r#"{"event":"my-event","channel":"c","data":"{\"a\":1}","user_id":"u1"}"#
        );
    }

    #[test]
    fn v2_event_frames_carry_identity() {
        let data = RawValue::from_string(r#""x""#.to_string()).unwrap();
        let meta = MessageMeta {
            message_id: "m1",
            position: Some(("s1", 7)),
            extras: None,
        };
        let f = OutboundFrame::event_v2("e", "c", &data, None, meta);
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            r#"{"event":"e","channel":"c","data":"x","message_id":"m1","serial":7,"stream_id":"s1"}"#
        );
        let meta = MessageMeta {
            message_id: "m2",
            position: None,
            extras: None,
        };
        let f = OutboundFrame::event_v2("e", "c", &data, Some("u"), meta);
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            r#"{"event":"e","channel":"c","data":"x","user_id":"u","message_id":"m2"}"#
        );
    }

    #[test]
    fn numeric_user_ids_become_strings() {
        let d: PresenceChannelData = serde_json::from_str(r#"{"user_id":42}"#).unwrap();
        assert_eq!(d.user_id.0, "42");
    }
}
