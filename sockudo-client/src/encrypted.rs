//! `private-encrypted-` channels: NaCl secretbox (XSalsa20-Poly1305), as pusher-js does.
//!
//! The auth endpoint returns a per-channel `shared_secret` (base64, 32 bytes) next to the
//! signature. Each event's `data` is `{"ciphertext","nonce"}` in base64 (itself possibly a
//! JSON string, as the HTTP API delivers it). The server never decrypts.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// Secretbox key length.
pub const KEY_LEN: usize = 32;
/// Secretbox nonce length.
pub const NONCE_LEN: usize = 24;

/// A channel's decryption key. Its `Debug` hides the bytes.
#[derive(Clone)]
pub struct SharedSecret([u8; KEY_LEN]);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl SharedSecret {
    /// Decode the base64 `shared_secret` of an auth response.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| decryption(format!("shared_secret is not base64: {e}")))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            decryption(format!(
                "shared_secret must be {KEY_LEN} bytes, got {}",
                b.len()
            ))
        })?;
        Ok(SharedSecret(key))
    }

    /// A key from its 32 raw bytes.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        SharedSecret(key)
    }

    /// Open an encrypted event's `data`, returning the plaintext parsed as JSON when it is
    /// JSON (as pusher-js does) and as a string otherwise.
    pub fn decrypt(&self, data: &Value) -> Result<Value> {
        let payload: Payload = match data {
            Value::String(text) => serde_json::from_str(text),
            other => serde_json::from_value(other.clone()),
        }
        .map_err(|e| decryption(format!("encrypted data must be {{ciphertext, nonce}}: {e}")))?;
        let nonce = STANDARD
            .decode(&payload.nonce)
            .map_err(|e| decryption(format!("nonce is not base64: {e}")))?;
        if nonce.len() != NONCE_LEN {
            return Err(decryption(format!(
                "nonce must be {NONCE_LEN} bytes, got {}",
                nonce.len()
            )));
        }
        let ciphertext = STANDARD
            .decode(&payload.ciphertext)
            .map_err(|e| decryption(format!("ciphertext is not base64: {e}")))?;
        let cipher = XSalsa20Poly1305::new(&self.0.into());
        let plain = cipher
            .decrypt(
                crypto_secretbox::Nonce::from_slice(&nonce),
                ciphertext.as_slice(),
            )
            .map_err(|_| {
                decryption("authentication failed: wrong shared secret or tampered data")
            })?;
        let text = String::from_utf8(plain).map_err(|_| decryption("plaintext is not UTF-8"))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Seal `plaintext` with `nonce` into the wire `{ciphertext, nonce}` object. Publishers
    /// normally do this; the client offers it for tests and tools.
    pub fn encrypt(&self, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Value> {
        let cipher = XSalsa20Poly1305::new(&self.0.into());
        let ciphertext = cipher
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| decryption("encryption failed"))?;
        Ok(
            serde_json::json!({ "ciphertext": STANDARD.encode(ciphertext), "nonce": STANDARD.encode(nonce) }),
        )
    }
}

#[derive(Deserialize)]
struct Payload {
    ciphertext: String,
    nonce: String,
}

fn decryption(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Decryption, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = SharedSecret::from_bytes([7; KEY_LEN]);
        let sealed = key.encrypt(br#"{"msg":"hi"}"#, [1; NONCE_LEN]).unwrap();
        assert_eq!(
            key.decrypt(&sealed).unwrap(),
            serde_json::json!({"msg":"hi"})
        );
        // As the HTTP API delivers it: a JSON string.
        assert_eq!(
            key.decrypt(&Value::String(sealed.to_string())).unwrap()["msg"],
            "hi"
        );
        let other = SharedSecret::from_bytes([8; KEY_LEN]);
        assert_eq!(
            other.decrypt(&sealed).unwrap_err().kind(),
            ErrorKind::Decryption
        );
        let plain = key.encrypt(b"not json", [2; NONCE_LEN]).unwrap();
        assert_eq!(
            key.decrypt(&plain).unwrap(),
            Value::String("not json".into())
        );
    }

    #[test]
    fn nacl_layout_tag_then_ciphertext() {
        // NaCl's secretbox output (what tweetnacl-js produces) is the 16-byte tag followed by
        // the ciphertext of the same length as the plaintext.
        let key = SharedSecret::from_bytes([0; KEY_LEN]);
        let sealed = key.encrypt(b"hello", [0; NONCE_LEN]).unwrap();
        let ct = STANDARD
            .decode(sealed["ciphertext"].as_str().unwrap())
            .unwrap();
        assert_eq!(ct.len(), 16 + 5, "Poly1305 tag prepended as in NaCl");
    }

    #[test]
    fn bad_secrets() {
        assert!(SharedSecret::from_base64("!!").is_err());
        assert!(SharedSecret::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(SharedSecret::from_base64(&STANDARD.encode([1u8; 32])).is_ok());
    }
}
