//! Web Push against wiremock: the payload decrypts with the subscription's private key
//! (RFC 8291, implemented here on the receiving side), the VAPID JWT verifies with the
//! server's public key (RFC 8292), and a gone subscription (410) is removed.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{json, Value};
use sha2::Sha256;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::harness::*;

/// A browser subscription: its key pair and auth secret.
struct Browser {
    key: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new(seed: u8) -> Browser {
        Browser {
            key: p256::SecretKey::from_slice(&[seed; 32]).unwrap(),
            auth: [seed.wrapping_add(1); 16],
        }
    }

    fn recipient(&self, endpoint: &str) -> Value {
        let public = self.key.public_key().to_encoded_point(false);
        json!({"transportType": "web", "endpoint": endpoint, "p256dh": b64(public.as_bytes()), "auth": b64(&self.auth)})
    }

    /// RFC 8291 §3.4 / RFC 8188, receiving side.
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        let (salt, rest) = body.split_at(16);
        let rs = u32::from_be_bytes(rest[..4].try_into().unwrap());
        assert_eq!(rs, 4096);
        let idlen = rest[4] as usize;
        assert_eq!(idlen, 65, "keyid is the sender's uncompressed public key");
        let as_public = p256::PublicKey::from_sec1_bytes(&rest[5..5 + idlen]).unwrap();
        let ciphertext = &rest[5 + idlen..];
        let shared =
            p256::ecdh::diffie_hellman(self.key.to_nonzero_scalar(), as_public.as_affine());
        let ua_public = self.key.public_key().to_encoded_point(false);
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(ua_public.as_bytes());
        info.extend_from_slice(as_public.to_encoded_point(false).as_bytes());
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .unwrap();
        let hk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        hk.expand(b"Content-Encoding: nonce\0", &mut nonce).unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(Nonce::from_slice(&nonce), ciphertext)
            .unwrap();
        assert_eq!(plain.pop(), Some(2), "a single, last record");
        plain
    }
}

/// `vapid t=<jwt>, k=<key>` verifies with the configured key pair; the claims.
fn check_vapid(r: &Request, origin: &str) -> Value {
    let auth = r.headers.get("authorization").unwrap().to_str().unwrap();
    let rest = auth.strip_prefix("vapid t=").expect("vapid scheme");
    let (jwt, k) = rest.split_once(", k=").unwrap();
    assert_eq!(k, vapid_key().1, "k is the server's public key");
    let parts: Vec<&str> = jwt.split('.').collect();
    let header: Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
    assert_eq!(header["alg"], "ES256");
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&unb64(k)).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&unb64(parts[2])).unwrap();
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("VAPID signature");
    let claims: Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
    assert_eq!(claims["aud"], origin);
    assert_eq!(claims["sub"], "mailto:ops@example.invalid");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp within 24 h: {claims}"
    );
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_payload_decrypts_with_the_subscription_key_and_vapid_verifies() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sub/alive"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/sub/gone"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&server)
        .await;
    let node = PushNode::on(Backend::Memory, None, |_| {}).await;
    let api = node.api();
    let (alive, gone) = (Browser::new(3), Browser::new(9));
    api.register(
        "w1",
        None,
        alive.recipient(&format!("{}/sub/alive", server.uri())),
    )
    .await;
    api.register(
        "w2",
        None,
        gone.recipient(&format!("{}/sub/gone", server.uri())),
    )
    .await;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 600_000;
    let pid = api
        .publish(&json!({
            "recipients": [{"type": "device", "deviceId": "w1"}, {"type": "device", "deviceId": "w2"}],
            "payload": {"title": "Hello", "body": "from sockudo", "data": {"k": [1, 2]}},
            "providerOverrides": [{"provider": "webPush", "payload": {"tag": "t1"}}],
            "expiresAtMs": expires,
        }))
        .await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "partiallySucceeded", "{st}");
    let reqs = server.received_requests().await.unwrap();
    let r = reqs.iter().find(|r| r.url.path() == "/sub/alive").unwrap();
    assert_eq!(r.headers.get("content-encoding").unwrap(), "aes128gcm");
    let ttl: u64 = r
        .headers
        .get("ttl")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 600, "TTL follows expiresAtMs: {ttl}");
    assert!(r.headers.get("urgency").is_some());
    check_vapid(r, &server.uri());
    let plain: Value = serde_json::from_slice(&alive.decrypt(&r.body)).unwrap();
    assert_eq!(
        plain,
        json!({"title": "Hello", "body": "from sockudo", "data": {"k": [1, 2]}, "tag": "t1"})
    );
    let (status, _) = api.get("/deviceRegistrations/w2", &[]).await;
    assert_eq!(status, 404, "a gone subscription is removed");
}
