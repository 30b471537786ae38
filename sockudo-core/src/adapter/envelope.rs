//! The cluster envelope: one compact JSON header line, `\n`, then the raw payload bytes.
//!
//! ```text
//! {"k":"b","o":"node-a","e":81723,"s":42,"a":"app-1","c":"presence-room"}\n<frame bytes…>
//! ```
//!
//! - The header is serialised by `serde_json` in compact form, which escapes every control
//!   character inside strings, so it never contains a raw `\n`; the first `\n` of a message
//!   therefore always ends the header, whatever the payload holds.
//! - A broadcast's payload is the published V1 frame, untouched: the receiver slices it out of
//!   the transport's buffer (`Bytes::slice`, no copy) and hands that slice to its handler, so a
//!   frame is decoded once per node and never re-encoded.
//! - A broadcast with a separate V2 frame sends both back to back; the header's `v` gives the
//!   V1 frame's length, and both become zero-copy slices on receipt. `m`, `n` and `i` carry the
//!   V2 message id, serial and stream id; `x` the socket to skip; `u` and `p` the user id and
//!   presence sequence number of a member event (absent otherwise, so nodes that predate
//!   them read these messages as before, and their messages as ordinary broadcasts), and
//!   `r: true` marks a removal.
//! - Control messages, queries and answers carry their JSON (`ControlMessage`,
//!   `ClusterQuery`, `ClusterAnswer`) as the payload.
//! - Heartbeats have an empty payload.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::AdapterError;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A [`super::Broadcast`]; payload = frame.
    #[serde(rename = "b")]
    Broadcast,
    /// A [`super::ControlMessage`]; payload = JSON.
    #[serde(rename = "c")]
    Control,
    /// A [`super::ClusterQuery`]; payload = JSON, `s` = request id.
    #[serde(rename = "q")]
    Request,
    /// A [`super::ClusterAnswer`]; payload = JSON, `s` = request id.
    #[serde(rename = "r")]
    Response,
    /// "I am alive"; no payload.
    #[serde(rename = "h")]
    Heartbeat,
    /// "I am leaving the cluster: forget me"; no payload.
    #[serde(rename = "l")]
    Leaving,
    /// "I am starting as this node id: does a live node already use it?"; no payload. Only a
    /// node with the same id answers (with a heartbeat); see `twin`.
    #[serde(rename = "w")]
    Probe,
}

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header<'a> {
    #[serde(rename = "k")]
    pub kind: Kind,
    /// Origin node id.
    #[serde(rename = "o", borrow)]
    pub origin: Cow<'a, str>,
    /// Origin incarnation (start time and random bits, per adapter instance): tells a
    /// restarted node with the same id apart from its previous life, and two live nodes
    /// sharing an id apart from each other.
    #[serde(rename = "e", default)]
    pub epoch: u64,
    /// Per-origin, per-kind sequence number (broadcast / control), or the request id
    /// (request / response).
    #[serde(rename = "s", default)]
    pub seq: u64,
    /// App id (broadcast).
    #[serde(rename = "a", default, borrow, skip_serializing_if = "Option::is_none")]
    pub app: Option<Cow<'a, str>>,
    /// Channel (broadcast).
    #[serde(rename = "c", default, borrow, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
    /// Socket to skip (broadcast).
    #[serde(rename = "x", default, borrow, skip_serializing_if = "Option::is_none")]
    pub except: Option<Cow<'a, str>>,
    /// V2 message id (broadcast).
    #[serde(rename = "m", default, borrow, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Cow<'a, str>>,
    /// Stream serial (broadcast).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// Stream id of `serial` (broadcast).
    #[serde(rename = "i", default, borrow, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Cow<'a, str>>,
    /// Present when the broadcast carries a separate V2 frame: the payload is the V1 frame
    /// (this many bytes) followed by the V2 frame.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub v1_len: Option<usize>,
    /// Member event: the user it is about (broadcast).
    #[serde(rename = "u", default, borrow, skip_serializing_if = "Option::is_none")]
    pub member_user: Option<Cow<'a, str>>,
    /// Member event: the store's presence sequence number of the decision (broadcast).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub member_seq: Option<u64>,
    /// Member event: true for a removal (absent, i.e. false, for an addition).
    #[serde(rename = "r", default, skip_serializing_if = "std::ops::Not::not")]
    pub member_removed: bool,
}

impl<'a> Header<'a> {
    pub fn new(kind: Kind, origin: &'a str, epoch: u64, seq: u64) -> Self {
        Header {
            kind,
            origin: Cow::Borrowed(origin),
            epoch,
            seq,
            app: None,
            channel: None,
            except: None,
            message_id: None,
            serial: None,
            stream_id: None,
            v1_len: None,
            member_user: None,
            member_seq: None,
            member_removed: false,
        }
    }
}

/// Header line + `\n` + payload, in one buffer.
pub(crate) fn encode(header: &Header<'_>, payload: &[u8]) -> Result<Bytes, AdapterError> {
    encode_parts(header, &[payload])
}

/// Header line + `\n` + the payload parts one after the other, in one buffer.
pub(crate) fn encode_parts(header: &Header<'_>, parts: &[&[u8]]) -> Result<Bytes, AdapterError> {
    let head = serde_json::to_vec(header)
        .map_err(|e| AdapterError::Malformed(format!("encode header: {e}")))?;
    let mut buf =
        BytesMut::with_capacity(head.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
    buf.put_slice(&head);
    buf.put_u8(b'\n');
    for p in parts {
        buf.put_slice(p);
    }
    Ok(buf.freeze())
}

/// Split a message into its header (borrowing from `msg`) and payload (a zero-copy slice).
pub(crate) fn decode(msg: &Bytes) -> Result<(Header<'_>, Bytes), AdapterError> {
    let nl = msg
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| AdapterError::Malformed("cluster message without header line".into()))?;
    let header: Header<'_> = serde_json::from_slice(&msg[..nl])
        .map_err(|e| AdapterError::Malformed(format!("cluster header: {e}")))?;
    Ok((header, msg.slice(nl + 1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_payload_bytes_verbatim() {
        let mut h = Header::new(Kind::Broadcast, "node\n\"a\"", 7, 42);
        h.app = Some("app".into());
        h.channel = Some("ch".into());
        h.except = Some("1.2".into());
        h.message_id = Some("m-1".into());
        h.serial = Some(9);
        h.stream_id = Some("s-1".into());
        h.v1_len = Some(4);
        h.member_user = Some("u\"1".into());
        h.member_seq = Some(1 << 60);
        let payload = b"{\"event\":\"x\"}\n\nline two\0";
        let msg = encode_parts(&h, &[b"v1\n!", payload]).unwrap();
        let (back, body) = decode(&msg).unwrap();
        assert_eq!(back, h);
        assert_eq!(&body[..4], b"v1\n!");
        assert_eq!(&body[4..], &payload[..]);
    }

    #[test]
    fn heartbeat_is_compact_and_empty() {
        let msg = encode(&Header::new(Kind::Heartbeat, "n1", 1, 0), b"").unwrap();
        assert_eq!(&msg[..], b"{\"k\":\"h\",\"o\":\"n1\",\"e\":1,\"s\":0}\n");
        let (h, body) = decode(&msg).unwrap();
        assert_eq!(h.kind, Kind::Heartbeat);
        assert!(body.is_empty());
    }

    #[test]
    fn headers_without_member_fields_still_decode() {
        let msg = Bytes::from_static(
            b"{\"k\":\"b\",\"o\":\"n1\",\"e\":1,\"s\":3,\"a\":\"app\",\"c\":\"ch\"}\nframe",
        );
        let (h, _) = decode(&msg).unwrap();
        assert_eq!((h.member_user, h.member_seq), (None, None));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in [
            &b""[..],
            b"no newline",
            b"{\"k\":\"z\",\"o\":\"n\"}\n",
            b"\n",
            b"{\"o\":1}\nxx",
        ] {
            assert!(
                matches!(
                    decode(&Bytes::copy_from_slice(bad)),
                    Err(AdapterError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
