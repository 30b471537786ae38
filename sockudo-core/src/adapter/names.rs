//! Names that cross a broker: cluster prefixes, node ids and topic names.
//!
//! Every broker we target accepts `[A-Za-z0-9._-]` in its names (Kafka topics, Google Pub/Sub
//! topics and subscriptions, AMQP routing keys, NATS subjects, Redis channels, Pulsar topics),
//! and none of those characters is a wildcard anywhere except `.` as NATS's and AMQP's token
//! separator, which we use only *between* the parts we build. So:
//! - a cluster prefix and a node id are checked against that alphabet (1–64 characters) when a
//!   node starts, and refused with a message that says why;
//! - a Pusher channel name (which may hold `=`, `@`, `,`, `;` and `.`) becomes one token with
//!   [`channel_token`], an injective escape into `[A-Za-z0-9_-]`.

use super::AdapterError;

/// The longest accepted prefix or node id.
pub const MAX_NAME_LEN: usize = 64;

/// Check a cluster prefix or a node id (`what` names it in the error).
pub fn validate_name(what: &str, name: &str) -> Result<(), AdapterError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(AdapterError::Malformed(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters long (got {})",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(AdapterError::Malformed(format!(
            "{what} {name:?} holds {bad:?}: only letters, digits, '.', '_' and '-' are allowed \
             (every broker accepts them in topic names)"
        )));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(AdapterError::Malformed(format!(
            "{what} {name:?} must not start or end with '.' nor hold \"..\" (empty name tokens)"
        )));
    }
    Ok(())
}

/// One broker-name token for an app id or a channel name: ASCII letters, digits and `-` stay,
/// every other byte (including `_` itself) becomes `_` followed by two lowercase hex digits.
/// Injective, so distinct channels never share a topic.
pub fn channel_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_broker_alphabet() {
        for ok in ["sockudo", "node-a", "eu.west_1", "n1", &"x".repeat(64)] {
            assert!(validate_name("node id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#b",
            "a b",
            "a*",
            "a>",
            "ä",
            ".a",
            "a.",
            "a..b",
            &"x".repeat(65),
        ] {
            assert!(validate_name("node id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channel_tokens_are_single_safe_tokens_and_injective() {
        assert_eq!(channel_token("presence-room"), "presence-room");
        assert_eq!(channel_token("a.b"), "a_2eb");
        assert_eq!(channel_token("a_b"), "a_5fb");
        assert_eq!(channel_token("#"), "_23");
        let chans = ["a_2eb", "a.b", "a_b", "a=b", "a@b,c;d", "é"];
        let mut seen = std::collections::HashSet::new();
        for c in chans {
            let t = channel_token(c);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(seen.insert(t), "collision for {c}");
        }
    }
}
