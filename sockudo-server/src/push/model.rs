//! The push API's request and stored shapes (PUSH.md field names), with every limit checked
//! while parsing, before any work.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::PushError;

/// Longest device id, client id, publish id.
pub const MAX_ID: usize = 128;
/// Longest channel name.
pub const MAX_CHANNEL: usize = 200;
/// Largest `metadata` (serialised).
pub const MAX_METADATA: usize = 4096;
/// Longest token or endpoint.
pub const MAX_TOKEN: usize = 4096;
/// Most recipients per publish.
pub const MAX_RECIPIENTS: usize = 1024;
/// Most publishes per batch.
pub const MAX_BATCH: usize = 100;

const FORM_FACTORS: [&str; 8] = [
    "phone", "tablet", "desktop", "tv", "car", "watch", "embedded", "other",
];
const PLATFORMS: [&str; 6] = ["android", "ios", "browser", "windows", "macos", "other"];

fn bad(msg: impl Into<String>) -> PushError {
    PushError::BadRequest(msg.into())
}

/// Check an id-like field: non-empty, at most [`MAX_ID`] bytes, no control characters.
pub fn check_id(what: &str, v: &str) -> Result<(), PushError> {
    if v.is_empty() || v.len() > MAX_ID || v.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} must be 1 to {MAX_ID} bytes without control characters"
        )));
    }
    Ok(())
}

/// Check a channel name.
pub fn check_channel(v: &str) -> Result<(), PushError> {
    if v.is_empty() || v.len() > MAX_CHANNEL || v.chars().any(char::is_control) {
        return Err(bad(format!(
            "channel must be 1 to {MAX_CHANNEL} bytes without control characters"
        )));
    }
    Ok(())
}

/// Where a device receives notifications (`push.recipient`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transportType", rename_all = "camelCase")]
pub enum Recipient {
    /// FCM.
    #[serde(rename = "gcm", rename_all = "camelCase")]
    Gcm { registration_token: String },
    /// APNs.
    #[serde(rename = "apns", rename_all = "camelCase")]
    Apns { device_token: String },
    /// Web Push.
    #[serde(rename = "web")]
    Web {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
}

impl Recipient {
    /// The provider that serves it (`fcm`, `apns`, `webPush`).
    pub fn provider(&self) -> &'static str {
        match self {
            Recipient::Gcm { .. } => "fcm",
            Recipient::Apns { .. } => "apns",
            Recipient::Web { .. } => "webPush",
        }
    }

    /// SHA-256 (hex) of the token or endpoint: shown instead of it.
    pub fn token_hash(&self) -> String {
        let token = match self {
            Recipient::Gcm { registration_token } => registration_token,
            Recipient::Apns { device_token } => device_token,
            Recipient::Web { endpoint, .. } => endpoint,
        };
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn check(&self) -> Result<(), PushError> {
        let long = |v: &str| v.is_empty() || v.len() > MAX_TOKEN;
        match self {
            Recipient::Gcm {
                registration_token: t,
            }
            | Recipient::Apns { device_token: t }
                if long(t) =>
            {
                Err(bad(format!(
                    "the push token must be 1 to {MAX_TOKEN} bytes"
                )))
            }
            Recipient::Web {
                endpoint,
                p256dh,
                auth,
            } => {
                if long(endpoint)
                    || !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
                {
                    return Err(bad("a web recipient needs an http(s) endpoint"));
                }
                super::providers::webpush::check_keys(p256dh, auth)
            }
            _ => Ok(()),
        }
    }
}

/// `push` of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDetails {
    /// Where to send.
    pub recipient: Recipient,
}

/// A device registration as clients send it (`DeviceDetails`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceDetails {
    /// Device id.
    pub id: String,
    /// Owner, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// phone | tablet | …
    pub form_factor: String,
    /// android | ios | …
    pub platform: String,
    /// Free-form, ≤ 4096 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Transport.
    pub push: PushDetails,
    /// Set by us: last registration time (ms).
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl DeviceDetails {
    /// Parse and check a registration body.
    pub fn parse(body: &[u8]) -> Result<DeviceDetails, PushError> {
        let d: DeviceDetails = serde_json::from_slice(body)
            .map_err(|e| bad(format!("invalid device registration: {e}")))?;
        check_id("id", &d.id)?;
        if let Some(c) = &d.client_id {
            check_id("clientId", c)?;
        }
        if !FORM_FACTORS.contains(&d.form_factor.as_str()) {
            return Err(bad(format!(
                "formFactor must be one of {}",
                FORM_FACTORS.join(", ")
            )));
        }
        if !PLATFORMS.contains(&d.platform.as_str()) {
            return Err(bad(format!(
                "platform must be one of {}",
                PLATFORMS.join(", ")
            )));
        }
        if let Some(m) = &d.metadata {
            if serde_json::to_vec(m).map_or(usize::MAX, |v| v.len()) > MAX_METADATA {
                return Err(bad(format!(
                    "metadata must be at most {MAX_METADATA} bytes"
                )));
            }
        }
        d.push.recipient.check()?;
        Ok(d)
    }

    /// The registration as the API shows it: no token, its hash and state instead.
    pub fn public(&self) -> Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "formFactor": self.form_factor,
            "platform": self.platform,
            "push": {
                "recipient": {"transportType": transport(&self.push.recipient)},
                "state": "ACTIVE",
            },
            "tokenHash": self.push.recipient.token_hash(),
            "updatedAtMs": self.updated_at_ms,
        });
        if let Some(c) = &self.client_id {
            v["clientId"] = Value::String(c.clone());
        }
        if let Some(m) = &self.metadata {
            v["metadata"] = Value::Object(m.clone());
        }
        v
    }
}

fn transport(r: &Recipient) -> &'static str {
    match r {
        Recipient::Gcm { .. } => "gcm",
        Recipient::Apns { .. } => "apns",
        Recipient::Web { .. } => "web",
    }
}

/// One recipient of a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Target {
    /// One device.
    #[serde(rename = "device")]
    Device {
        #[serde(rename = "deviceId", alias = "device_id")]
        device_id: String,
    },
    /// Every device of a client.
    #[serde(rename = "client")]
    Client {
        #[serde(rename = "clientId", alias = "client_id")]
        client_id: String,
    },
    /// Every subscriber of a push channel.
    #[serde(rename = "channel")]
    Channel { channel: String },
}

/// The notification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Payload {
    /// Title (≤ 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Text (≤ 4096 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Icon name or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Sound name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Collapse key (FCM `collapse_key`, APNs `apns-collapse-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// Custom key/values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
}

/// A per-provider override (merged over what the provider builds from the payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderOverride {
    /// `fcm` | `apns` | `webPush`.
    pub provider: String,
    /// JSON object merged into the provider's message.
    pub payload: Map<String, Value>,
}

/// `POST /publish` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default)]
    pub publish_id: Option<String>,
    #[serde(default, rename = "idempotency_key")]
    pub idempotency_key: Option<String>,
    pub recipients: Vec<Target>,
    pub payload: Payload,
    #[serde(default)]
    pub provider_overrides: Vec<ProviderOverride>,
    #[serde(default)]
    pub sync: Option<bool>,
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// What a publish sends: the payload and the overrides, as every stage carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The notification.
    pub payload: Payload,
    /// Per-provider overrides.
    #[serde(default)]
    pub overrides: Vec<ProviderOverride>,
    /// Not sent after this time (ms since the epoch).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl Message {
    /// The override object for `provider`, when any.
    pub fn override_for(&self, provider: &str) -> Option<&Map<String, Value>> {
        self.overrides
            .iter()
            .find(|o| o.provider == provider)
            .map(|o| &o.payload)
    }
}

impl PublishRequest {
    /// Parse and check one publish (a JSON value of a batch or a body).
    pub fn from_value(v: Value) -> Result<PublishRequest, PushError> {
        let r: PublishRequest =
            serde_json::from_value(v).map_err(|e| bad(format!("invalid publish request: {e}")))?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), PushError> {
        if self.sync == Some(true) {
            return Err(bad(
                "sync delivery is not supported: push is queue-oriented; omit `sync` (or set it \
                 false) and follow GET publish/{publishId}/status",
            ));
        }
        for id in [&self.publish_id, &self.idempotency_key]
            .into_iter()
            .flatten()
        {
            check_id("publishId / idempotency_key", id)?;
        }
        if self.recipients.is_empty() || self.recipients.len() > MAX_RECIPIENTS {
            return Err(bad(format!(
                "recipients must hold 1 to {MAX_RECIPIENTS} targets"
            )));
        }
        for t in &self.recipients {
            match t {
                Target::Device { device_id } => check_id("deviceId", device_id)?,
                Target::Client { client_id } => check_id("clientId", client_id)?,
                Target::Channel { channel } => check_channel(channel)?,
            }
        }
        let p = &self.payload;
        if p.title.as_ref().is_some_and(|t| t.len() > 256) {
            return Err(bad("payload.title must be at most 256 bytes"));
        }
        if p.body.as_ref().is_some_and(|t| t.len() > 4096) {
            return Err(bad("payload.body must be at most 4096 bytes"));
        }
        let size = serde_json::to_vec(p).map_or(usize::MAX, |v| v.len());
        if size > 3072 + 4096 {
            return Err(bad("payload is too large"));
        }
        for o in &self.provider_overrides {
            if !matches!(o.provider.as_str(), "fcm" | "apns" | "webPush") {
                return Err(bad(
                    "providerOverrides[].provider must be fcm, apns or webPush",
                ));
            }
            if serde_json::to_vec(&o.payload).map_or(usize::MAX, |v| v.len()) > 4096 {
                return Err(bad(
                    "each providerOverrides[].payload must be at most 4096 bytes",
                ));
            }
        }
        if let (Some(nb), Some(ex)) = (self.not_before_ms, self.expires_at_ms) {
            if ex <= nb {
                return Err(bad("expiresAtMs must be after notBeforeMs"));
            }
        }
        Ok(())
    }

    /// The message every stage carries.
    pub fn message(&self) -> Message {
        Message {
            payload: self.payload.clone(),
            overrides: self.provider_overrides.clone(),
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// A fingerprint of what the publish does (ids excluded): a retry must match it.
    pub fn fingerprint(&self) -> String {
        let v = serde_json::json!({
            "r": self.recipients, "p": self.payload, "o": self.provider_overrides,
            "nb": self.not_before_ms, "ex": self.expires_at_ms,
        });
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    }
}
