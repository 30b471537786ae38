//! FCM HTTP v1: a service-account JWT (RS256) is exchanged at the account's `token_uri` for an
//! OAuth2 access token, cached until a minute before it expires and refreshed by one caller
//! at a time; each notification is one `POST {endpoint}/v1/projects/{project}/messages:send`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rsa::pkcs8::DecodePrivateKey;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::{classify, jwt, network, Provider, SendResult};
use crate::config::PushSection;
use crate::push::model::{Message, Recipient};
use crate::push::PushError;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key: String,
    client_email: String,
    token_uri: String,
}

/// The FCM client. `Debug` shows the project and account, never the key or token.
pub struct Fcm {
    http: reqwest::Client,
    endpoint: String,
    project: String,
    email: String,
    token_uri: String,
    key: rsa::RsaPrivateKey,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("project", &self.project)
            .field("client_email", &self.email)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// Read the service-account file named by `PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH`.
    pub fn from_settings(s: &PushSection, http: reqwest::Client) -> Result<Fcm, PushError> {
        let path = &s.fcm_service_account_json_path;
        let text = std::fs::read_to_string(path).map_err(|e| {
            PushError::Config(format!(
                "cannot read PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH {path:?}: {e}"
            ))
        })?;
        let acct: ServiceAccount = serde_json::from_str(&text).map_err(|_| {
            PushError::Config(format!("{path:?} is not a service-account JSON (project_id, private_key, client_email, token_uri)"))
        })?;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&acct.private_key).map_err(|_| {
            PushError::Config(format!(
                "the private_key in {path:?} is not a PKCS#8 RSA key"
            ))
        })?;
        Ok(Fcm {
            http,
            endpoint: s.fcm_endpoint.trim_end_matches('/').to_owned(),
            project: acct.project_id,
            email: acct.client_email,
            token_uri: acct.token_uri,
            key,
            token: Mutex::new(None),
        })
    }

    /// A valid access token (cached, or fetched now).
    async fn access_token(&self, force: bool) -> Result<String, SendResult> {
        let mut slot = self.token.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if !force && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let now = jwt::now_secs();
        let claims = json!({"iss": self.email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600});
        let assertion = jwt::rs256(&json!({"alg": "RS256", "typ": "JWT"}), &claims, &self.key)
            .map_err(SendResult::Permanent)?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ];
        let body = serde_urlencoded_form(&form);
        let resp = self
            .http
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(network)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        if status != 200 {
            return Err(match classify(status, &headers, "") {
                SendResult::Permanent(_) => {
                    SendResult::Permanent(format!("FCM token exchange refused (HTTP {status})"))
                }
                other => other,
            });
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(token) = v["access_token"].as_str() else {
            return Err(SendResult::Retry {
                after: None,
                reason: "FCM token answer without access_token".into(),
                throttled: false,
            });
        };
        let ttl = v["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60)
            .max(1);
        *slot = Some((token.to_owned(), Instant::now() + Duration::from_secs(ttl)));
        Ok(token.to_owned())
    }

    async fn post(
        &self,
        token: &str,
        body: &Value,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), SendResult> {
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.project
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(network)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.text().await.unwrap_or_default()))
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn serde_urlencoded_form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                url::form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The FCM `message` for `token`.
pub fn message_body(token: &str, m: &Message) -> Value {
    let p = &m.payload;
    let mut msg = Map::new();
    msg.insert("token".into(), json!(token));
    let mut notification = Map::new();
    if let Some(t) = &p.title {
        notification.insert("title".into(), json!(t));
    }
    if let Some(b) = &p.body {
        notification.insert("body".into(), json!(b));
    }
    if !notification.is_empty() {
        msg.insert("notification".into(), Value::Object(notification));
    }
    if let Some(data) = &p.data {
        // FCM data values are strings.
        let data: Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
                )
            })
            .collect();
        msg.insert("data".into(), Value::Object(data));
    }
    let mut android = Map::new();
    let mut an = Map::new();
    if let Some(i) = &p.icon {
        an.insert("icon".into(), json!(i));
    }
    if let Some(s) = &p.sound {
        an.insert("sound".into(), json!(s));
    }
    if !an.is_empty() {
        android.insert("notification".into(), Value::Object(an));
    }
    if let Some(c) = &p.collapse_key {
        android.insert("collapse_key".into(), json!(c));
    }
    if let Some(ex) = m.expires_at_ms {
        let secs = ex.saturating_sub(crate::push::now_ms()) / 1000;
        android.insert("ttl".into(), json!(format!("{secs}s")));
    }
    if !android.is_empty() {
        msg.insert("android".into(), Value::Object(android));
    }
    if let Some(o) = m.override_for("fcm") {
        for (k, v) in o {
            msg.insert(k.clone(), v.clone());
        }
    }
    json!({ "message": msg })
}

#[async_trait]
impl Provider for Fcm {
    async fn send(&self, recipient: &Recipient, message: &Message) -> SendResult {
        let Recipient::Gcm { registration_token } = recipient else {
            return SendResult::Permanent("not an FCM registration".into());
        };
        let body = message_body(registration_token, message);
        let mut force = false;
        for _ in 0..2 {
            let token = match self.access_token(force).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let (status, headers, text) = match self.post(&token, &body).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match status {
                200 => return SendResult::Sent,
                401 if !force => force = true, // the cached token was revoked: fetch a new one once
                404 | 400
                    if text.contains("UNREGISTERED")
                        || text.contains("registration-token-not-registered") =>
                {
                    return SendResult::Invalid("FCM: UNREGISTERED".into())
                }
                _ => return classify(status, &headers, &text),
            }
        }
        SendResult::Retry {
            after: None,
            reason: "FCM refused a fresh access token".into(),
            throttled: false,
        }
    }
}
