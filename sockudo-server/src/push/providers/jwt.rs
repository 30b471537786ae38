//! Compact JWTs signed with ES256 (APNs, VAPID) or RS256 (the FCM service-account assertion).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use serde_json::Value;

/// Base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url (padding tolerated).
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An ES256 JWT (`header` should say `"alg":"ES256"`): the signature is r‖s, 64 bytes.
pub fn es256(header: &Value, claims: &Value, key: &p256::ecdsa::SigningKey) -> String {
    let input = signing_input(header, claims);
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// An RS256 JWT (RSASSA-PKCS1-v1_5 with SHA-256).
pub fn rs256(header: &Value, claims: &Value, key: &rsa::RsaPrivateKey) -> Result<String, String> {
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer as _};
    let input = signing_input(header, claims);
    let signer = SigningKey::<sha2::Sha256>::new(key.clone());
    let sig = signer
        .try_sign(input.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(format!("{input}.{}", b64(&sig.to_bytes())))
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    super::super::now_ms() / 1000
}
