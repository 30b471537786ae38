//! The benchmark message: built by publishers, recognised and timed by clients.
//!
//! The publish `data` string is a small JSON object
//! `{"bench_ts":<ns since process start>,"bench_seq":<n>,"pad":"xxx…"}` padded to the requested
//! size. The server relays `data` as a JSON string, so on the wire the client sees it escaped
//! (`{\"bench_ts\":123,…}`). Clients never deserialise the frame: [`parse_send_ts`] finds the key
//! and reads the digits after it, which works for both the escaped and the plain form and
//! allocates nothing.

use std::fmt::Write as _;

/// Key carrying the send timestamp (ns since the process-wide [`crate::clock::Clock`] origin).
pub const TS_KEY: &str = "bench_ts";
/// Key carrying the publish sequence number.
pub const SEQ_KEY: &str = "bench_seq";

/// Build the `data` string for one publish, padded with `x` to at least `payload_bytes` bytes.
pub fn build_data(send_ts_ns: u64, seq: u64, payload_bytes: usize) -> String {
    let mut s = String::with_capacity(payload_bytes.max(64));
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{{\"{TS_KEY}\":{send_ts_ns},\"{SEQ_KEY}\":{seq},\"pad\":\""
    );
    let closing = "\"}";
    let used = s.len() + closing.len();
    if payload_bytes > used {
        s.extend(std::iter::repeat_n('x', payload_bytes - used));
    }
    s.push_str(closing);
    s
}

/// The send timestamp carried by a delivered frame, if it is a benchmark message.
pub fn parse_send_ts(frame: &str) -> Option<u64> {
    parse_u64_after(frame, TS_KEY)
}

/// Find `key` and parse the unsigned integer that follows its `":` / `\":` separator.
fn parse_u64_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let bytes = text.as_bytes();
    let mut i = start;
    // Skip the closing quote (possibly escaped), the colon and optional whitespace; at most a few bytes.
    while i < bytes.len() && i - start < 8 && matches!(bytes[i], b'"' | b'\\' | b':' | b' ') {
        i += 1;
    }
    let digits_start = i;
    let mut value: u64 = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(bytes[i] - b'0'))?;
        i += 1;
    }
    if i == digits_start {
        None
    } else {
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_padded_to_size_and_valid_json() {
        for size in [0usize, 10, 64, 100, 1000, 10_000] {
            let d = build_data(123_456_789, 42, size);
            assert!(d.len() >= size);
            if size >= 64 {
                assert_eq!(d.len(), size);
            }
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["bench_ts"], 123_456_789u64);
            assert_eq!(v["bench_seq"], 42);
        }
    }

    #[test]
    fn parses_escaped_data_inside_a_delivered_frame() {
        let data = build_data(987_654_321_012, 7, 100);
        let frame =
            serde_json::json!({"event": "bench", "channel": "bench", "data": data}).to_string();
        assert!(frame.contains("\\\"bench_ts\\\":"));
        assert_eq!(parse_send_ts(&frame), Some(987_654_321_012));
        assert_eq!(parse_u64_after(&frame, SEQ_KEY), Some(7));
    }

    #[test]
    fn parses_plain_and_spaced_forms() {
        assert_eq!(parse_send_ts(r#"{"bench_ts":5,"bench_seq":6}"#), Some(5));
        assert_eq!(
            parse_u64_after(r#"{"bench_ts":5,"bench_seq":6}"#, SEQ_KEY),
            Some(6)
        );
        assert_eq!(parse_send_ts(r#"{"bench_ts": 17}"#), Some(17));
        assert_eq!(
            parse_send_ts(r#"{"bench_ts":18446744073709551615}"#),
            Some(u64::MAX)
        );
    }

    #[test]
    fn rejects_non_bench_and_malformed_frames() {
        assert_eq!(
            parse_send_ts(r#"{"event":"pusher:ping","data":"{}"}"#),
            None
        );
        assert_eq!(parse_send_ts(r#"{"bench_ts":"abc"}"#), None);
        assert_eq!(parse_send_ts(r#"{"bench_ts":}"#), None);
        assert_eq!(parse_send_ts(r#"{"bench_ts":18446744073709551616}"#), None);
        assert_eq!(parse_send_ts("bench_ts"), None);
    }
}
