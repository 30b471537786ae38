//! The size of an event's `data` as the Pusher limits count it: the length of the string
//! when `data` is a JSON string (unescaped), the length of the JSON text otherwise.

/// Bytes of `raw` (one complete JSON value, as parsed) as the payload limit counts them: for
/// a JSON string, the UTF-8 length of its unescaped content; for anything else (or a string
/// holding an unpaired surrogate escape, which has no UTF-8 form), the length of the text.
///
/// Counts without building the unescaped copy: the publish path measures every event.
pub fn data_size(raw: &str) -> usize {
    string_content_len(raw).unwrap_or(raw.len())
}

/// Unescaped UTF-8 length of a JSON string literal; `None` if `raw` is not one or holds an
/// unpaired surrogate.
fn string_content_len(raw: &str) -> Option<usize> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let b = inner.as_bytes();
    let mut len = 0usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            len += 1;
            i += 1;
            continue;
        }
        match b.get(i + 1)? {
            b'u' => {
                let unit = hex4(b, i + 2)?;
                i += 6;
                len += match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                            return None;
                        }
                        if !(0xDC00..=0xDFFF).contains(&hex4(b, i + 2)?) {
                            return None;
                        }
                        i += 6;
                        4
                    }
                    0xDC00..=0xDFFF => return None,
                    u => char::from_u32(u)?.len_utf8(),
                };
            }
            _ => {
                len += 1;
                i += 2;
            }
        }
    }
    Some(len)
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the limit meant before: the length of the unescaped copy.
    fn by_copy(raw: &str) -> usize {
        serde_json::from_str::<String>(raw).map_or(raw.len(), |s| s.len())
    }

    #[test]
    fn strings_count_their_content() {
        for raw in [
            r#""""#,
            r#""abc""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u20ac\ud83d\ude00""#,
            "\"h\u{e9}llo \u{1F600}\"",
            r#""\ud83d""#,
            r#""\ude00x""#,
            r#""\ud83dx\ude00""#,
            r#"{"a":"\u00e9"}"#,
            "123",
            "null",
            r#"["x"]"#,
        ] {
            assert_eq!(data_size(raw), by_copy(raw), "{raw}");
        }
    }

    proptest! {
        #[test]
        fn matches_the_unescaped_copy(s in any::<String>()) {
            let raw = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(data_size(&raw), s.len());
            // Escaping everything non-ASCII the JSON way must count the same.
            let escaped: String = s.encode_utf16().map(|u| {
                if u < 0x80 {
                    let quoted = serde_json::to_string(&char::from(u as u8).to_string()).unwrap();
                    quoted[1..quoted.len() - 1].to_owned()
                } else {
                    format!("\\u{u:04x}")
                }
            }).collect();
            let raw = format!("\"{escaped}\"");
            prop_assert_eq!(data_size(&raw), by_copy(&raw));
        }
    }
}
