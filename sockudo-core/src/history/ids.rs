//! Stream generation ids.

/// A fresh random stream id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn fresh_stream_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_distinct() {
        let a = fresh_stream_id();
        let b = fresh_stream_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
