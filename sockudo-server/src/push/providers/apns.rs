//! APNs over HTTP/2 with token auth: an ES256 JWT (`iss` = team id, `kid` = key id, `iat`)
//! from the `.p8` key, renewed every 50 minutes (APNs refuses one older than an hour), on
//! `POST {endpoint}/3/device/{token}`. A `https://` endpoint (the default) negotiates HTTP/2
//! by ALPN and needs the `webhooks-tls` build feature (rustls); an `http://` endpoint speaks
//! HTTP/2 with prior knowledge (h2c; test servers only).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use p256::pkcs8::DecodePrivateKey;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::{classify, jwt, network, Provider, SendResult};
use crate::config::PushSection;
use crate::push::model::{Message, Recipient};
use crate::push::PushError;

/// How long one provider token is used.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);

/// The APNs client. `Debug` shows team, key id and topic, never the key or token.
pub struct Apns {
    http: reqwest::Client,
    endpoint: String,
    team: String,
    key_id: String,
    topic: String,
    key: p256::ecdsa::SigningKey,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("team", &self.team)
            .field("key_id", &self.key_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// Read the `.p8` key named by `PUSH_APNS_PRIVATE_KEY_PATH`.
    pub fn from_settings(s: &PushSection) -> Result<Apns, PushError> {
        let path = &s.apns_private_key_path;
        let pem = std::fs::read_to_string(path).map_err(|e| {
            PushError::Config(format!(
                "cannot read PUSH_APNS_PRIVATE_KEY_PATH {path:?}: {e}"
            ))
        })?;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| PushError::Config(format!("{path:?} is not a PKCS#8 P-256 key (.p8)")))?;
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5));
        let builder = if s.apns_endpoint.starts_with("http://") {
            builder.http2_prior_knowledge()
        } else {
            builder
        };
        let http = builder
            .build()
            .map_err(|e| PushError::Config(format!("APNs HTTP/2 client: {e}")))?;
        Ok(Apns {
            http,
            endpoint: s.apns_endpoint.trim_end_matches('/').to_owned(),
            team: s.apns_team_id.clone(),
            key_id: s.apns_key_id.clone(),
            topic: s.apns_topic.clone(),
            key,
            token: Mutex::new(None),
        })
    }

    async fn provider_token(&self, force: bool) -> String {
        let mut slot = self.token.lock().await;
        if let Some((t, at)) = slot.as_ref() {
            if !force && at.elapsed() < TOKEN_LIFE {
                return t.clone();
            }
        }
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let token = jwt::es256(
            &header,
            &json!({"iss": self.team, "iat": jwt::now_secs()}),
            &self.key,
        );
        *slot = Some((token.clone(), Instant::now()));
        token
    }
}

/// The APNs JSON body.
pub fn body(m: &Message) -> Value {
    let p = &m.payload;
    let mut alert = Map::new();
    if let Some(t) = &p.title {
        alert.insert("title".into(), json!(t));
    }
    if let Some(b) = &p.body {
        alert.insert("body".into(), json!(b));
    }
    let mut aps = Map::new();
    aps.insert("alert".into(), Value::Object(alert));
    if let Some(s) = &p.sound {
        aps.insert("sound".into(), json!(s));
    }
    let mut root = p.data.clone().unwrap_or_default();
    root.insert("aps".into(), Value::Object(aps));
    if let Some(o) = m.override_for("apns") {
        for (k, v) in o {
            root.insert(k.clone(), v.clone());
        }
    }
    Value::Object(root)
}

#[async_trait]
impl Provider for Apns {
    async fn send(&self, recipient: &Recipient, message: &Message) -> SendResult {
        let Recipient::Apns { device_token } = recipient else {
            return SendResult::Permanent("not an APNs registration".into());
        };
        let payload = body(message);
        let expiration = message.expires_at_ms.map_or(0, |ms| ms / 1000);
        let mut force = false;
        for _ in 0..2 {
            let token = self.provider_token(force).await;
            let mut req = self
                .http
                .post(format!("{}/3/device/{device_token}", self.endpoint))
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-expiration", expiration.to_string())
                .json(&payload);
            if let Some(c) = &message.payload.collapse_key {
                req = req.header("apns-collapse-id", c);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return network(e),
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            match status {
                200 => return SendResult::Sent,
                410 => return SendResult::Invalid("APNs: 410 Unregistered".into()),
                400 if text.contains("BadDeviceToken") => {
                    return SendResult::Invalid("APNs: BadDeviceToken".into())
                }
                403 if text.contains("ExpiredProviderToken") && !force => force = true,
                _ => return classify(status, &headers, &text),
            }
        }
        SendResult::Permanent("APNs refused a fresh provider token".into())
    }
}
