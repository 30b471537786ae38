//! What the layer stores under a key: a pending claim, or the completed response.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

/// Response headers stored with a completed record and replayed; the rest (dates,
/// rate-limit counters, ...) describe the first response only.
pub(crate) const STORED_HEADERS: [HeaderName; 3] =
    [CONTENT_TYPE, CONTENT_ENCODING, CONTENT_LANGUAGE];

/// The stored record, as JSON: `{"state":"pending","fp":"<hex>"}` or
/// `{"state":"done","fp":…,"status":200,"headers":[["content-type","…"]],"body":"…"}`
/// (`body_hex` instead of `body` when the body is not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Record {
    Pending {
        fp: String,
    },
    Done {
        fp: String,
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_hex: Option<String>,
    },
}

/// A completed response, decoded for replay.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Record {
    pub(crate) fn pending(fp: &str) -> Bytes {
        Self::Pending { fp: fp.to_owned() }.encode()
    }

    pub(crate) fn done(fp: &str, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Bytes {
        let headers = STORED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        let (body, body_hex) = match std::str::from_utf8(body) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(hex::encode(body))),
        };
        Self::Done {
            fp: fp.to_owned(),
            status: status.as_u16(),
            headers,
            body,
            body_hex,
        }
        .encode()
    }

    fn encode(&self) -> Bytes {
        // Serializing this enum of strings and integers cannot fail; an empty value would
        // only ever be read back as unreadable (503), never as a success.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        serde_json::from_slice(raw).ok()
    }

    pub(crate) fn fingerprint(&self) -> &str {
        match self {
            Self::Pending { fp } | Self::Done { fp, .. } => fp,
        }
    }

    /// The stored response of a `Done` record (`None` for pending or undecodable parts).
    pub(crate) fn stored(&self) -> Option<Stored> {
        let Self::Done {
            status,
            headers,
            body,
            body_hex,
            ..
        } = self
        else {
            return None;
        };
        let status = StatusCode::from_u16(*status).ok()?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = HeaderValue::from_str(value).ok()?;
            map.append(name, value);
        }
        let body = match (body, body_hex) {
            (Some(text), _) => Bytes::from(text.clone()),
            (None, Some(hex_text)) => Bytes::from(hex::decode(hex_text).ok()?),
            (None, None) => Bytes::new(),
        };
        Some(Stored {
            status,
            headers: map,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let pending = Record::pending("ab");
        assert_eq!(&pending[..], br#"{"state":"pending","fp":"ab"}"#);
        assert_eq!(
            Record::decode(&pending),
            Some(Record::Pending { fp: "ab".into() })
        );

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        let raw = Record::done(
            "ab",
            StatusCode::ACCEPTED,
            &headers,
            &Bytes::from_static(b"{}"),
        );
        let record = Record::decode(&raw).unwrap();
        assert_eq!(record.fingerprint(), "ab");
        let stored = record.stored().unwrap();
        assert_eq!(stored.status, StatusCode::ACCEPTED);
        assert_eq!(stored.headers.len(), 1, "only content headers are kept");
        assert_eq!(stored.headers[CONTENT_TYPE], "application/json");
        assert_eq!(stored.body, "{}");

        let binary = Bytes::from_static(&[0xff, 0x00, 0x10]);
        let raw = Record::done("cd", StatusCode::OK, &HeaderMap::new(), &binary);
        assert!(String::from_utf8_lossy(&raw).contains("body_hex"));
        assert_eq!(Record::decode(&raw).unwrap().stored().unwrap().body, binary);

        assert_eq!(Record::decode(b"nonsense"), None);
        assert!(Record::Pending { fp: "x".into() }.stored().is_none());
    }
}
