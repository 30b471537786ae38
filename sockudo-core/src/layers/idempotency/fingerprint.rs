//! Request [`Fingerprint`]s and the canonical JSON they hash.

use std::fmt;
use std::fmt::Write as _;

use http::{Method, Uri};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The body field carrying the key.
pub const BODY_KEY_FIELD: &str = "idempotency_key";

/// SHA-256 of what makes two requests "the same request" for idempotency: two requests with
/// one key and different fingerprints are a conflict (409).
///
/// [`of_request`](Self::of_request) hashes the method, the path, the query without its auth
/// parameters (`auth_*`, `body_md5`: they change on every signed retry), and the canonical
/// body: for a JSON body, the value with its top-level `idempotency_key` removed and object
/// keys sorted, re-serialized without whitespace (so the key's position, key order and
/// formatting do not matter, and a key moved between body and header still matches); any
/// other body is hashed as its raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request (see the type docs).
    #[must_use]
    pub fn of_request(method: &Method, uri: &Uri, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_str().as_bytes());
        hasher.update(b"\n");
        hasher.update(uri.path().as_bytes());
        hasher.update(b"\n");
        let mut params: Vec<&str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                !pair.is_empty() && !name.starts_with("auth_") && name != "body_md5"
            })
            .collect();
        params.sort_unstable();
        hasher.update(params.join("&").as_bytes());
        hasher.update(b"\n");
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => hasher.update(canonical_without_key(&value)),
            Err(_) => hasher.update(body),
        }
        Self(hasher.finalize().into())
    }

    /// The fingerprint of one JSON value (a batch item): its canonical form without a
    /// top-level `idempotency_key`.
    #[must_use]
    pub fn of_json(value: &Value) -> Self {
        Self(Sha256::digest(canonical_without_key(value)).into())
    }

    /// Lower-case hex, as stored in the cache.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

fn canonical_without_key(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(name, _)| name.as_str() != BODY_KEY_FIELD)
                .collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(&entries, &mut out);
        }
        other => write_canonical(other, &mut out),
    }
    out.into_bytes()
}

/// Write `value` as canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// strings escaped as `serde_json` does, numbers in `serde_json`'s own formatting.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(&entries, out);
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars: `Value`'s Display is compact JSON, infallible.
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

fn write_object(entries: &[(&String, &Value)], out: &mut String) {
    out.push('{');
    for (index, (name, value)) in entries.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", Value::String((*name).clone()));
        out.push(':');
        write_canonical(value, out);
    }
    out.push('}');
}

/// Where a body names its key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyKey {
    /// No `idempotency_key` (or `null`), or not a JSON object.
    Absent,
    /// A string key.
    Present(String),
    /// `idempotency_key` is there but not a string.
    NotAString,
}

/// The top-level `idempotency_key` of a JSON object body. Bodies that cannot contain the
/// field (its name does not occur, and no `\u` escape could spell it) are not parsed at all.
pub(crate) fn body_key(body: &[u8]) -> BodyKey {
    let could_have_key = contains(body, BODY_KEY_FIELD.as_bytes()) || contains(body, b"\\u");
    if !could_have_key {
        return BodyKey::Absent;
    }
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return BodyKey::Absent;
    };
    match map.remove(BODY_KEY_FIELD) {
        None | Some(Value::Null) => BodyKey::Absent,
        Some(Value::String(key)) => BodyKey::Present(key),
        Some(_) => BodyKey::NotAString,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut start = 0;
    while let Some(offset) = haystack
        .get(start..)
        .and_then(|h| h.iter().position(|b| *b == first))
    {
        let at = start + offset + 1;
        if haystack.get(at..at + rest.len()) == Some(rest) {
            return true;
        }
        start = at;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(method: &str, uri: &str, body: &str) -> Fingerprint {
        Fingerprint::of_request(
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
            body.as_bytes(),
        )
    }

    #[test]
    fn canonical_form() {
        let value = json!({"b": [1, {"d": "x\"", "c": null}], "a": true, "é": 1.5});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":true,"b":[1,{"c":null,"d":"x\""}],"é":1.5}"#
        );
    }

    #[test]
    fn fingerprint_ignores_key_order_whitespace_key_and_auth_params() {
        let base = fp(
            "POST",
            "/apps/1/events?auth_key=k&auth_timestamp=1&auth_signature=a&body_md5=x",
            r#"{"name":"e","channel":"c","data":"d"}"#,
        );
        let same = [
            fp("POST", "/apps/1/events?auth_key=k&auth_timestamp=2&auth_signature=b&body_md5=y&auth_version=1.0",
               r#"{ "data":"d", "channel":"c",  "name":"e", "idempotency_key":"k1" }"#),
            fp("POST", "/apps/1/events", r#"{"channel":"c","data":"d","name":"e"}"#),
        ];
        for other in same {
            assert_eq!(base, other);
        }
        let different = [
            fp(
                "PUT",
                "/apps/1/events",
                r#"{"name":"e","channel":"c","data":"d"}"#,
            ),
            fp(
                "POST",
                "/apps/2/events",
                r#"{"name":"e","channel":"c","data":"d"}"#,
            ),
            fp(
                "POST",
                "/apps/1/events?info=user_count",
                r#"{"name":"e","channel":"c","data":"d"}"#,
            ),
            fp(
                "POST",
                "/apps/1/events",
                r#"{"name":"e","channel":"c","data":"D"}"#,
            ),
            fp("POST", "/apps/1/events", "not json"),
        ];
        for other in different {
            assert_ne!(base, other);
        }
        assert_eq!(fp("POST", "/x", "not json"), fp("POST", "/x", "not json"));
        assert_eq!(
            fp("POST", "/x?b=2&a=1&auth_key=q", ""),
            fp("POST", "/x?a=1&b=2", "")
        );
        assert_eq!(base.to_hex().len(), 64);
        assert!(format!("{base:?}").starts_with("Fingerprint("));
    }

    #[test]
    fn item_fingerprints() {
        let a = Fingerprint::of_json(
            &json!({"name":"e","channel":"c","data":"d","idempotency_key":"1"}),
        );
        let b = Fingerprint::of_json(
            &json!({"channel":"c","data":"d","name":"e","idempotency_key":"2"}),
        );
        let c = Fingerprint::of_json(&json!({"channel":"c","data":"x","name":"e"}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Nested keys are payload, not the item's key.
        assert_ne!(
            Fingerprint::of_json(&json!({"x": {"idempotency_key": "1"}})),
            Fingerprint::of_json(&json!({"x": {"idempotency_key": "2"}}))
        );
    }

    #[test]
    fn body_keys() {
        assert_eq!(body_key(br#"{"name":"e"}"#), BodyKey::Absent);
        assert_eq!(
            body_key(br#"{"idempotency_key":"abc"}"#),
            BodyKey::Present("abc".into())
        );
        assert_eq!(
            body_key(br#"{"\u0069dempotency_key":"esc"}"#),
            BodyKey::Present("esc".into())
        );
        assert_eq!(body_key(br#"{"idempotency_key":null}"#), BodyKey::Absent);
        assert_eq!(body_key(br#"{"idempotency_key":5}"#), BodyKey::NotAString);
        assert_eq!(body_key(br#"["idempotency_key"]"#), BodyKey::Absent);
        assert_eq!(body_key(br#"{"idempotency_key":"#), BodyKey::Absent);
        assert_eq!(body_key(b""), BodyKey::Absent);
        assert_eq!(
            body_key(br#"{"batch":[{"idempotency_key":"inner"}]}"#),
            BodyKey::Absent,
            "only the top level counts"
        );
        assert!(contains(b"xxidempotency_keyxx", b"idempotency_key"));
        assert!(!contains(b"idempotency_ke", b"idempotency_key"));
        assert!(contains(b"iidempotency_key", b"idempotency_key"));
    }
}
