//! Reading server frames and writing client frames with sockudo-core's wire types.
//!
//! Parsing goes through [`ClientFrame`] (event, channel, raw data, and the rule about
//! double-encoded system `data`); the V2 broadcast fields and `user_id` that sit beside them
//! are read by [`FrameMeta`]. Writing goes through [`OutboundFrame`], whose encoders produce
//! the same `{"event","channel"?,"data":"<json string>"}` shape a server accepts.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sockudo_core::protocol::events::{self, Family};
use sockudo_core::protocol::frame::UserId;
use sockudo_core::protocol::{ClientFrame, OutboundFrame};

use crate::error::{Error, ErrorKind, Result};
use crate::event::Message;

/// Largest frame the client parses (servers cap frames far lower).
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Fields of a server frame beside `event`/`channel`/`data`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FrameMeta {
    #[serde(default)]
    pub user_id: Option<UserId>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub serial: Option<u64>,
    #[serde(default)]
    pub stream_id: Option<String>,
    #[serde(default)]
    pub extras: Option<Value>,
}

/// A parsed server frame.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub frame: ClientFrame,
    pub meta: FrameMeta,
}

pub(crate) fn parse(text: &str) -> Result<Incoming> {
    let frame = ClientFrame::parse(text, MAX_FRAME_BYTES)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad frame from server: {e}")))?;
    let meta = serde_json::from_str::<FrameMeta>(text).unwrap_or_default();
    Ok(Incoming { frame, meta })
}

impl Incoming {
    /// `data` of a system event as JSON (string-encoded or inline; `Null` when absent).
    pub fn system_data(&self) -> Value {
        if self.frame.data.is_none() {
            return Value::Null;
        }
        self.frame.system_data::<Value>().unwrap_or(Value::Null)
    }

    /// `data` of an app event as sent (a JSON string stays a string).
    pub fn app_data(&self) -> Value {
        self.frame
            .data
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null)
    }

    pub fn into_message(self, channel: String) -> Message {
        let data = self.app_data();
        Message {
            channel,
            event: self.frame.event,
            data,
            user_id: self.meta.user_id.map(|u| u.0),
            message_id: self.meta.message_id,
            serial: self.meta.serial,
            stream_id: self.meta.stream_id,
            extras: self.meta.extras,
        }
    }
}

pub(crate) fn subscribe(
    family: Family,
    channel: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) -> String {
    let mut data = serde_json::json!({ "channel": channel });
    if let Some(auth) = auth {
        data["auth"] = Value::String(auth.to_owned());
    }
    if let Some(cd) = channel_data {
        data["channel_data"] = Value::String(cd.to_owned());
    }
    OutboundFrame::system(family, events::SUBSCRIBE, None, &data.to_string())
}

pub(crate) fn unsubscribe(family: Family, channel: &str) -> String {
    let data = serde_json::json!({ "channel": channel }).to_string();
    OutboundFrame::system(family, events::UNSUBSCRIBE, None, &data)
}

pub(crate) fn signin(family: Family, auth: &str, user_data: &str) -> String {
    let data = serde_json::json!({ "auth": auth, "user_data": user_data }).to_string();
    OutboundFrame::system(family, events::SIGNIN, None, &data)
}

pub(crate) fn ping(family: Family) -> String {
    OutboundFrame::ping(family)
}

pub(crate) fn pong(family: Family) -> String {
    OutboundFrame::pong(family)
}

/// A `client-` event; `data` is sent verbatim.
pub(crate) fn client_event(event: &str, channel: &str, data: &RawValue) -> String {
    String::from_utf8_lossy(&OutboundFrame::event(event, channel, data, None)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_fields_and_numeric_user_ids() {
        let inc = parse(r#"{"event":"e","channel":"c","data":"x","message_id":"m1","serial":3,"stream_id":"s","user_id":7}"#).unwrap();
        let m = inc.into_message("c".into());
        assert_eq!(
            (
                m.message_id.as_deref(),
                m.serial,
                m.stream_id.as_deref(),
                m.user_id.as_deref()
            ),
            (Some("m1"), Some(3), Some("s"), Some("7"))
        );
        assert_eq!(m.data, Value::String("x".into()));
    }

    #[test]
    fn system_data_both_forms() {
        let a = parse(r#"{"event":"pusher:error","data":"{\"message\":\"m\",\"code\":4001}"}"#)
            .unwrap();
        assert_eq!(a.system_data()["code"], 4001);
        let b = parse(r#"{"event":"pusher:error","data":{"message":"m","code":null}}"#).unwrap();
        assert_eq!(b.system_data()["message"], "m");
        let c = parse(r#"{"event":"pusher:pong"}"#).unwrap();
        assert_eq!(c.system_data(), Value::Null);
    }

    #[test]
    fn writes_double_encoded_subscribe() {
        let f = subscribe(
            Family::Pusher,
            "presence-x",
            Some("k:s"),
            Some(r#"{"user_id":"1"}"#),
        );
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["event"], "pusher:subscribe");
        let d: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(d["channel_data"], r#"{"user_id":"1"}"#);
        let raw = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        assert_eq!(
            client_event("client-x", "private-a", &raw),
            r#"{"event":"client-x","channel":"private-a","data":{"a":1}}"#
        );
    }
}
