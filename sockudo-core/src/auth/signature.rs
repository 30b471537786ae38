//! HMAC-SHA256 primitives and the client-facing signatures of the Pusher protocol.
//!
//! Auth strings travel as `"{app_key}:{hex signature}"`. Verification splits on the first `':'`
//! (the hex part can never contain one), checks the key in plain comparison (keys are public),
//! then compares the MAC in constant time so a timing oracle cannot recover it byte by byte.

use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a client-supplied auth string was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `':'` separator, or an empty key or signature part.
    #[error("malformed auth string: expected \"<app key>:<hex signature>\"")]
    Malformed,
    /// The key part names a different app than the one being authenticated against.
    #[error("auth key does not match the app key")]
    KeyMismatch,
    /// The signature does not match what the app secret produces for this payload.
    #[error("invalid signature")]
    Invalid,
}

/// Build the MAC without going through `new_from_slice`, whose `Result` can never be `Err` for
/// HMAC but would still force an `unwrap` or a dubious fallback key here. Per RFC 2104 a key is
/// hashed when longer than the block and zero-padded otherwise, so a pre-normalised full block
/// yields the identical MAC through the infallible constructor.
fn mac_for(secret: &[u8]) -> HmacSha256 {
    let mut block = Key::<HmacSha256>::default();
    if secret.len() > block.len() {
        let digest = Sha256::digest(secret);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    <HmacSha256 as KeyInit>::new(&block)
}

fn hmac_sha256(secret: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = mac_for(secret);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, message))
}

/// Constant-time check of a lowercase-or-uppercase hex signature; false on bad hex / wrong length.
pub fn verify_hmac_sha256_hex(secret: &[u8], message: &[u8], signature_hex: &str) -> bool {
    // Some SDKs and proxies uppercase hex; `hex::decode` accepts both cases.
    let Ok(provided) = hex::decode(signature_hex) else {
        return false;
    };
    let expected = hmac_sha256(secret, message);
    // The length is public (always 32), so checking it first leaks nothing; `ct_eq` on slices
    // would return false for a length mismatch anyway, this just makes the intent explicit.
    provided.len() == expected.len() && bool::from(provided.as_slice().ct_eq(&expected))
}

/// `"{socket_id}:{channel}"` or `"{socket_id}:{channel}:{channel_data}"`.
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

fn auth_string(key: &str, secret: &str, message: &str) -> String {
    format!(
        "{key}:{}",
        hmac_sha256_hex(secret.as_bytes(), message.as_bytes())
    )
}

/// `"{key}:{hex}"` as clients/auth endpoints produce.
pub fn sign_channel(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    auth_string(
        key,
        secret,
        &channel_string_to_sign(socket_id, channel, channel_data),
    )
}

fn verify_auth_string(
    key: &str,
    secret: &str,
    message: &str,
    auth: &str,
) -> Result<(), SignatureError> {
    let (auth_key, signature) = auth.split_once(':').ok_or(SignatureError::Malformed)?;
    if auth_key.is_empty() || signature.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if auth_key != key {
        return Err(SignatureError::KeyMismatch);
    }
    if verify_hmac_sha256_hex(secret.as_bytes(), message.as_bytes(), signature) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// Verify a `pusher:subscribe` auth for a private, private-encrypted or (with `channel_data`)
/// presence channel. `channel_data` must be the exact string the client sent: re-serialising
/// parsed JSON would change the bytes and break the signature.
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), SignatureError> {
    verify_auth_string(
        key,
        secret,
        &channel_string_to_sign(socket_id, channel, channel_data),
        auth,
    )
}

/// Signin auth: HMAC over `"{socket_id}::user::{user_data}"`, returned as `"{key}:{hex}"`.
pub fn sign_user(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    auth_string(key, secret, &user_string_to_sign(socket_id, user_data))
}

/// Verify a `pusher:signin` auth. As with channel data, `user_data` must be the raw string.
pub fn verify_user_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), SignatureError> {
    verify_auth_string(
        key,
        secret,
        &user_string_to_sign(socket_id, user_data),
        auth,
    )
}

/// `X-Pusher-Signature` value: hex HMAC-SHA256 of the exact webhook body bytes.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), body)
}

/// Lowercase hex MD5 of a request body, as sent in the HTTP API's `body_md5` parameter.
pub fn body_md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher docs worked example.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const PRIVATE_SIG: &str = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";

    #[test]
    fn private_channel_worked_example() {
        assert_eq!(
            channel_string_to_sign("1234.1234", "private-foobar", None),
            "1234.1234:private-foobar"
        );
        let auth = sign_channel(KEY, SECRET, "1234.1234", "private-foobar", None);
        assert_eq!(auth, format!("{KEY}:{PRIVATE_SIG}"));
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Ok(())
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_with_key_longer_than_block_matches_rfc4231_case_6() {
        let key = [0xaa_u8; 131];
        assert_eq!(
            hmac_sha256_hex(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn hmac_with_key_exactly_one_block() {
        // A 64-byte key is used as-is, not hashed: it must not be confused with the long-key path.
        let key = [0x0b_u8; 64];
        let mut reference = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
        reference.update(b"msg");
        assert_eq!(
            hmac_sha256_hex(&key, b"msg"),
            hex::encode(reference.finalize().into_bytes())
        );
    }

    #[test]
    fn presence_round_trip() {
        let data = r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#;
        let auth = sign_channel(KEY, SECRET, "1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            verify_channel_auth(
                KEY,
                SECRET,
                "1234.1234",
                "presence-foobar",
                Some(data),
                &auth
            ),
            Ok(())
        );
        // channel_data is part of the signed string: a changed or dropped payload must fail.
        let other = r#"{"user_id":"11","user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            verify_channel_auth(
                KEY,
                SECRET,
                "1234.1234",
                "presence-foobar",
                Some(other),
                &auth
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", None, &auth),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn signin_round_trip() {
        let user_data = r#"{"id":"42","name":"Ada"}"#;
        let auth = sign_user(KEY, SECRET, "1.2", user_data);
        let expected = hmac_sha256_hex(
            SECRET.as_bytes(),
            format!("1.2::user::{user_data}").as_bytes(),
        );
        assert_eq!(auth, format!("{KEY}:{expected}"));
        assert_eq!(
            verify_user_auth(KEY, SECRET, "1.2", user_data, &auth),
            Ok(())
        );
        assert_eq!(
            verify_user_auth(KEY, SECRET, "1.3", user_data, &auth),
            Err(SignatureError::Invalid)
        );
        // A channel auth for the same socket must not double as a signin auth.
        let channel_auth = sign_channel(KEY, SECRET, "1.2", "private-x", None);
        assert_eq!(
            verify_user_auth(KEY, SECRET, "1.2", user_data, &channel_auth),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn tampered_signature_rejected() {
        let mut sig = PRIVATE_SIG.to_owned();
        sig.replace_range(0..1, "6");
        let auth = format!("{KEY}:{sig}");
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Err(SignatureError::Invalid)
        );
        // Right signature, wrong secret / socket / channel.
        let good = format!("{KEY}:{PRIVATE_SIG}");
        assert_eq!(
            verify_channel_auth(KEY, "other", "1234.1234", "private-foobar", None, &good),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1235", "private-foobar", None, &good),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobaz", None, &good),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn key_mismatch_rejected() {
        let auth = format!("someotherkey:{PRIVATE_SIG}");
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Err(SignatureError::KeyMismatch)
        );
    }

    #[test]
    fn malformed_auth_rejected() {
        for auth in [
            "",
            ":",
            "nocolon",
            &format!(":{PRIVATE_SIG}"),
            &format!("{KEY}:"),
        ] {
            assert_eq!(
                verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, auth),
                Err(SignatureError::Malformed),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn uppercase_hex_accepted() {
        let auth = format!("{KEY}:{}", PRIVATE_SIG.to_uppercase());
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Ok(())
        );
        assert!(verify_hmac_sha256_hex(
            SECRET.as_bytes(),
            b"1234.1234:private-foobar",
            &PRIVATE_SIG.to_uppercase()
        ));
    }

    #[test]
    fn wrong_length_or_bad_hex_rejected() {
        let msg = b"1234.1234:private-foobar";
        let secret = SECRET.as_bytes();
        assert!(verify_hmac_sha256_hex(secret, msg, PRIVATE_SIG));
        assert!(!verify_hmac_sha256_hex(secret, msg, &PRIVATE_SIG[..62]));
        assert!(!verify_hmac_sha256_hex(secret, msg, &PRIVATE_SIG[..63]));
        assert!(!verify_hmac_sha256_hex(
            secret,
            msg,
            &format!("{PRIVATE_SIG}00")
        ));
        assert!(!verify_hmac_sha256_hex(secret, msg, ""));
        assert!(!verify_hmac_sha256_hex(
            secret,
            msg,
            &PRIVATE_SIG.replace('5', "g")
        ));
        let auth = format!("{KEY}:{}", &PRIVATE_SIG[..40]);
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn extra_colons_stay_in_signature_part() {
        // Splitting on the first ':' means a trailing ":x" lands in the hex and fails decoding.
        let auth = format!("{KEY}:{PRIVATE_SIG}:x");
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None, &auth),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn webhook_and_md5() {
        let body = br#"{"time_ms":1,"events":[]}"#;
        assert_eq!(
            webhook_signature(SECRET, body),
            hmac_sha256_hex(SECRET.as_bytes(), body)
        );
        assert_eq!(body_md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            body_md5_hex(
                br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#
            ),
            "ec365a775a4cd0599faeb73354201b6f"
        );
    }

    #[test]
    fn error_messages_are_human() {
        assert!(SignatureError::KeyMismatch.to_string().contains("key"));
        assert!(SignatureError::Malformed.to_string().contains("malformed"));
        assert_eq!(SignatureError::Invalid.to_string(), "invalid signature");
    }
}
