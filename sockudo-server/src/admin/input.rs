//! Admin API request bodies and the validation of every field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sockudo_core::app::{App, WebhookTarget};

/// A field that failed validation: answered 422 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(m: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(m.into()))
}

/// Settable fields of an app (create and update). Absent fields keep their value (update)
/// or take the default (create).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFields {
    /// See `App::enabled`.
    pub enabled: Option<bool>,
    /// See `App::enable_client_messages`.
    pub enable_client_messages: Option<bool>,
    /// See `App::max_connections`.
    pub max_connections: Option<u64>,
    /// See `App::max_client_events_per_second`.
    pub max_client_events_per_second: Option<u32>,
    /// See `App::max_presence_members`.
    pub max_presence_members: Option<usize>,
    /// See `App::max_presence_user_info_bytes`.
    pub max_presence_user_info_bytes: Option<usize>,
    /// See `App::max_event_payload_bytes`.
    pub max_event_payload_bytes: Option<usize>,
    /// See `App::max_event_channels_at_once`.
    pub max_event_channels_at_once: Option<usize>,
    /// See `App::max_event_name_length`.
    pub max_event_name_length: Option<usize>,
    /// See `App::max_event_batch_size`.
    pub max_event_batch_size: Option<usize>,
    /// The app's webhook targets (replacing the current ones).
    pub webhooks: Option<Vec<WebhookInput>>,
}

/// `POST /apps`: the fields plus optional credentials (generated when absent).
#[derive(Debug, Default)]
pub struct CreateApp {
    /// The app id (generated when absent).
    pub id: Option<String>,
    /// The app key (generated when absent).
    pub key: Option<String>,
    /// The app secret (generated when absent).
    pub secret: Option<String>,
    /// Everything else.
    pub fields: AppFields,
}

impl CreateApp {
    /// Parse a create body: `id`, `key`, `secret` (strings, optional) and the [`AppFields`].
    pub fn parse(body: &[u8]) -> Result<CreateApp, Invalid> {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| Invalid(format!("body: {e}")))?;
        let mut take = |name: &str| match map.remove(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => invalid(format!("{name} must be a string")),
        };
        let (id, key, secret) = (take("id")?, take("key")?, take("secret")?);
        let fields = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| Invalid(format!("body: {e}")))?;
        Ok(CreateApp {
            id,
            key,
            secret,
            fields,
        })
    }
}

/// One webhook target as the admin API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

/// An app in a list: everything but the secret.
#[derive(Debug, Serialize)]
pub struct AppSummary<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub enabled: bool,
    pub enable_client_messages: bool,
    pub max_connections: u64,
}

const EVENT_TYPES: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// Ids and keys: 1–64 of `A-Z a-z 0-9 _ - .` (they appear in URL paths).
pub fn check_name(what: &str, v: &str) -> Result<(), Invalid> {
    if v.is_empty() || v.len() > 64 {
        return invalid(format!("{what} must be 1-64 characters"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return invalid(format!(
            "{what} may only hold letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// Secrets: 16–128 visible ASCII characters.
pub fn check_secret(v: &str) -> Result<(), Invalid> {
    if v.len() < 16 || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid("secret must be 16-128 visible ASCII characters");
    }
    Ok(())
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    v: Option<T>,
    lo: T,
    hi: T,
) -> Result<Option<T>, Invalid> {
    match v {
        Some(x) if x < lo || x > hi => invalid(format!("{name} must be between {lo} and {hi}")),
        other => Ok(other),
    }
}

/// Byte limits are stored in whole KB (the table's columns are `*_in_kb`).
fn kb(name: &str, v: Option<usize>, hi: usize) -> Result<Option<usize>, Invalid> {
    let v = range(name, v, 1024, hi)?;
    if v.is_some_and(|x| x % 1024 != 0) {
        return invalid(format!("{name} must be a multiple of 1024 (stored in KB)"));
    }
    Ok(v)
}

fn check_webhook(w: WebhookInput) -> Result<WebhookTarget, Invalid> {
    let url = w.url.trim();
    let parsed = url::Url::parse(url).map_err(|e| Invalid(format!("webhook url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() || url.len() > 2048 {
        return invalid(format!(
            "webhook url {url:?} must be an http(s) URL with a host"
        ));
    }
    if let Some(t) = w
        .event_types
        .iter()
        .find(|t| !EVENT_TYPES.contains(&t.as_str()))
    {
        return invalid(format!(
            "unknown webhook event type {t:?} (known: {})",
            EVENT_TYPES.join(", ")
        ));
    }
    if w.headers.len() > 20 {
        return invalid("at most 20 webhook headers");
    }
    for (name, value) in &w.headers {
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value_ok =
            value.len() <= 4096 && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if !name_ok || !value_ok {
            return invalid(format!(
                "webhook header {name:?} is not a valid HTTP header"
            ));
        }
    }
    Ok(WebhookTarget {
        url: url.to_owned(),
        event_types: w.event_types,
        headers: w.headers,
    })
}

impl AppFields {
    /// Check every field and write the given ones into `app`.
    pub fn apply(self, app: &mut App) -> Result<(), Invalid> {
        if let Some(v) = self.enabled {
            app.enabled = v;
        }
        if let Some(v) = self.enable_client_messages {
            app.enable_client_messages = v;
        }
        if let Some(v) = range("max_connections", self.max_connections, 0, 1 << 40)? {
            app.max_connections = v;
        }
        let events = self.max_client_events_per_second;
        if let Some(v) = range("max_client_events_per_second", events, 0, 100_000)? {
            app.max_client_events_per_second = v;
        }
        if let Some(v) = range(
            "max_presence_members",
            self.max_presence_members,
            1,
            100_000,
        )? {
            app.max_presence_members = v;
        }
        let info = self.max_presence_user_info_bytes;
        if let Some(v) = kb("max_presence_user_info_bytes", info, 64 * 1024)? {
            app.max_presence_user_info_bytes = v;
        }
        let payload = self.max_event_payload_bytes;
        if let Some(v) = kb("max_event_payload_bytes", payload, 10 * 1024 * 1024)? {
            app.max_event_payload_bytes = v;
        }
        let chans = self.max_event_channels_at_once;
        if let Some(v) = range("max_event_channels_at_once", chans, 1, 1000)? {
            app.max_event_channels_at_once = v;
        }
        if let Some(v) = range("max_event_name_length", self.max_event_name_length, 1, 1000)? {
            app.max_event_name_length = v;
        }
        if let Some(v) = range("max_event_batch_size", self.max_event_batch_size, 1, 100)? {
            app.max_event_batch_size = v;
        }
        if let Some(hooks) = self.webhooks {
            if hooks.len() > 10 {
                return invalid("at most 10 webhook targets");
            }
            app.webhooks = hooks
                .into_iter()
                .map(check_webhook)
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

/// Random lowercase hex of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl CreateApp {
    /// The app to create: given credentials checked, missing ones generated.
    pub fn into_app(self) -> Result<App, Invalid> {
        let id = self.id.unwrap_or_else(|| random_hex(8));
        let key = self.key.unwrap_or_else(|| random_hex(10));
        let secret = self.secret.unwrap_or_else(|| random_hex(20));
        check_name("id", &id)?;
        check_name("key", &key)?;
        check_secret(&secret)?;
        let mut app = App::new(id, key, secret);
        self.fields.apply(&mut app)?;
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Result<AppFields, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_field_is_checked() {
        let mut app = App::new("a", "k", "s");
        for bad in [
            r#"{"max_presence_members":0}"#,
            r#"{"max_event_payload_bytes":1000}"#,
            r#"{"max_event_payload_bytes":104857600}"#,
            r#"{"max_event_batch_size":1000}"#,
            r#"{"webhooks":[{"url":"ftp://h/x"}]}"#,
            r#"{"webhooks":[{"url":"http://h/x","event_types":["bogus"]}]}"#,
            r#"{"webhooks":[{"url":"http://h/x","headers":{"a b":"c"}}]}"#,
            r#"{"webhooks":[{"url":"http://h/x","headers":{"A":"c\r\nX: y"}}]}"#,
        ] {
            let r = fields(bad).unwrap().apply(&mut app);
            assert!(r.is_err(), "{bad}");
        }
        assert!(fields(r#"{"bogus":1}"#).is_err(), "unknown fields refused");
        assert!(fields(r#"{"max_connections":-1}"#).is_err());
        fields(r#"{"max_event_payload_bytes":20480,"enabled":false}"#)
            .unwrap()
            .apply(&mut app)
            .unwrap();
        assert_eq!((app.max_event_payload_bytes, app.enabled), (20480, false));
    }

    #[test]
    fn credentials_are_checked_or_generated() {
        let app = CreateApp::default().into_app().unwrap();
        assert!(check_name("id", &app.id).is_ok() && check_secret(&app.secret).is_ok());
        for (id, key, secret) in [
            ("a/b", "k", "0123456789abcdef"),
            ("a", "", "0123456789abcdef"),
            ("a", "k", "short"),
            ("a", "k", "has space in secret!"),
        ] {
            let c = CreateApp {
                id: Some(id.into()),
                key: Some(key.into()),
                secret: Some(secret.into()),
                fields: AppFields::default(),
            };
            assert!(c.into_app().is_err(), "{id} {key} {secret}");
        }
    }
}
