//! Web Push: RFC 8030 delivery (`TTL`, `Urgency`), RFC 8291 message encryption
//! (`Content-Encoding: aes128gcm`, one record) and RFC 8292 VAPID
//! (`Authorization: vapid t=<ES256 JWT>, k=<public key>`).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use async_trait::async_trait;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{ecdh, PublicKey};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::{classify, jwt, network, Provider, SendResult};
use crate::config::PushSection;
use crate::push::model::{Message, Recipient};
use crate::push::PushError;

/// The record size we declare (one record holds the whole message).
const RS: u32 = 4096;

/// Check a subscription's keys: `p256dh` a P-256 point, `auth` 16 bytes (base64url).
pub fn check_keys(p256dh: &str, auth: &str) -> Result<(), PushError> {
    let key = jwt::unb64(p256dh).and_then(|k| PublicKey::from_sec1_bytes(&k).ok());
    let auth = jwt::unb64(auth).filter(|a| a.len() == 16);
    if key.is_none() || auth.is_none() {
        return Err(PushError::BadRequest(
            "a web recipient needs p256dh (a base64url P-256 public key) and auth (16 bytes, base64url)".into(),
        ));
    }
    Ok(())
}

/// Encrypt `plaintext` for a subscription (RFC 8291 §3–4) with the sender key `as_secret`
/// and `salt`; the body to POST.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8],
    as_secret: &p256::SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    if plaintext.len() + 17 > RS as usize {
        return Err(format!(
            "Web Push payload of {} bytes is over {}",
            plaintext.len(),
            RS - 17
        ));
    }
    let as_public = as_secret.public_key().to_encoded_point(false);
    let ua_bytes = ua_public.to_encoded_point(false);
    let shared = ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_bytes.as_bytes());
    info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| e.to_string())?;
    hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| e.to_string())?;
    let mut record = plaintext.to_vec();
    record.push(2); // last-record delimiter, no padding
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(86 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RS.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// A fresh sender key (RFC 8291: one per message).
fn ephemeral_key() -> Option<p256::SecretKey> {
    // A random 32-byte string is a valid scalar except with negligible probability.
    (0..8).find_map(|_| p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()).ok())
}

/// The Web Push client. `Debug` shows the contact, never the key.
pub struct WebPush {
    http: reqwest::Client,
    key: p256::ecdsa::SigningKey,
    public_b64: String,
    contact: String,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush")
            .field("contact", &self.contact)
            .field("public_key", &self.public_b64)
            .finish_non_exhaustive()
    }
}

impl WebPush {
    /// The VAPID key is `PUSH_WEBPUSH_VAPID_PRIVATE_KEY`: the raw 32-byte P-256 scalar,
    /// base64url (as Web Push tools print it).
    pub fn from_settings(s: &PushSection, http: reqwest::Client) -> Result<WebPush, PushError> {
        let key = jwt::unb64(&s.webpush_vapid_private_key)
            .and_then(|raw| p256::ecdsa::SigningKey::from_slice(&raw).ok())
            .ok_or_else(|| {
                PushError::Config("PUSH_WEBPUSH_VAPID_PRIVATE_KEY is not a base64url P-256 private key (32 bytes)".into())
            })?;
        let contact = s.webpush_vapid_contact.clone();
        if !(contact.starts_with("mailto:") || contact.starts_with("https://")) {
            return Err(PushError::Config(
                "PUSH_WEBPUSH_VAPID_CONTACT must be a mailto: or https: URL".into(),
            ));
        }
        let public = key.verifying_key().to_encoded_point(false);
        Ok(WebPush {
            http,
            public_b64: jwt::b64(public.as_bytes()),
            key,
            contact,
        })
    }

    fn vapid(&self, endpoint: &str) -> Result<String, SendResult> {
        let url = url::Url::parse(endpoint)
            .map_err(|_| SendResult::Permanent("invalid endpoint".into()))?;
        let aud = url.origin().ascii_serialization();
        let claims = json!({"aud": aud, "exp": jwt::now_secs() + 12 * 3600, "sub": self.contact});
        let token = jwt::es256(&json!({"typ": "JWT", "alg": "ES256"}), &claims, &self.key);
        Ok(format!("vapid t={token}, k={}", self.public_b64))
    }
}

/// The JSON the service worker receives.
pub fn notification_json(m: &Message) -> Value {
    let mut v = match serde_json::to_value(&m.payload) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    if let Some(o) = m.override_for("webPush") {
        for (k, val) in o {
            v.insert(k.clone(), val.clone());
        }
    }
    Value::Object(v)
}

#[async_trait]
impl Provider for WebPush {
    async fn send(&self, recipient: &Recipient, message: &Message) -> SendResult {
        let Recipient::Web {
            endpoint,
            p256dh,
            auth,
        } = recipient
        else {
            return SendResult::Permanent("not a Web Push subscription".into());
        };
        let keys = jwt::unb64(p256dh)
            .and_then(|k| PublicKey::from_sec1_bytes(&k).ok())
            .zip(jwt::unb64(auth));
        let Some((ua, auth)) = keys else {
            return SendResult::Invalid("the subscription's keys are unusable".into());
        };
        let plaintext = notification_json(message).to_string();
        let Some(secret) = ephemeral_key() else {
            return SendResult::Retry {
                after: None,
                reason: "no sender key".into(),
                throttled: false,
            };
        };
        let body = match encrypt(plaintext.as_bytes(), &ua, &auth, &secret, rand::random()) {
            Ok(b) => b,
            Err(e) => return SendResult::Permanent(e),
        };
        let authorization = match self.vapid(endpoint) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let ttl = message.expires_at_ms.map_or(4 * 7 * 86_400, |ex| {
            ex.saturating_sub(crate::push::now_ms()) / 1000
        });
        let resp = self
            .http
            .post(endpoint)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", ttl.to_string())
            .header("urgency", "normal")
            .header("authorization", authorization)
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return network(e),
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => SendResult::Sent,
            404 | 410 => SendResult::Invalid(format!("Web Push subscription gone (HTTP {status})")),
            _ => {
                let headers = resp.headers().clone();
                classify(status, &headers, &resp.text().await.unwrap_or_default())
            }
        }
    }
}
