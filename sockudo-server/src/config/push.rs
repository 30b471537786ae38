//! `[push]`: push notifications (`PUSH_*`), read and checked at start. Provider credentials
//! come only from files (`*_PATH`) or environment secrets (`PUSH_WEBPUSH_VAPID_PRIVATE_KEY`),
//! never from the TOML file, and `Debug` never shows them.

use serde::Deserialize;

use super::{ConfigError, NodeSettings};

/// `[push]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// `PUSH_ENABLED`: serve the push API and run the pipeline (cargo feature `push`).
    pub enabled: bool,
    /// `PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH`: the FCM service-account JSON file.
    pub fcm_service_account_json_path: String,
    /// `PUSH_FCM_ENDPOINT`: FCM's base URL (default `https://fcm.googleapis.com`).
    pub fcm_endpoint: String,
    /// `PUSH_APNS_TEAM_ID`, `PUSH_APNS_KEY_ID`, `PUSH_APNS_PRIVATE_KEY_PATH` (the `.p8`
    /// file) and `PUSH_APNS_TOPIC` (the app's bundle id): APNs token auth.
    pub apns_team_id: String,
    /// See [`PushSection::apns_team_id`].
    pub apns_key_id: String,
    /// See [`PushSection::apns_team_id`].
    pub apns_private_key_path: String,
    /// See [`PushSection::apns_team_id`].
    pub apns_topic: String,
    /// `PUSH_APNS_ENDPOINT`: APNs' base URL (default `https://api.push.apple.com`).
    pub apns_endpoint: String,
    /// `PUSH_WEBPUSH_VAPID_PRIVATE_KEY`: the VAPID key (environment only: a secret).
    #[serde(skip)]
    pub webpush_vapid_private_key: String,
    /// `PUSH_WEBPUSH_VAPID_CONTACT`: the `sub` claim (`mailto:` or `https:` URL).
    pub webpush_vapid_contact: String,
    /// `PUSH_RETRY_MAX_ATTEMPTS`: sends per device before its notification is dead-lettered.
    pub retry_max_attempts: u32,
    /// `PUSH_PUBLISH_STATUS_TTL_DAYS`: how long statuses, send markers and dead letters are
    /// kept (days; also how long a `publishId` stays one campaign).
    pub publish_status_ttl_days: u64,
    /// `PUSH_DISPATCH_CONCURRENCY`: in-flight sends per provider on each node.
    pub dispatch_concurrency: usize,
    /// `PUSH_SHARD_SIZE`: devices per dispatch shard.
    pub shard_size: usize,
    /// `PUSH_LEASE_SECS`: how long a node holds a plan or shard job before another node may
    /// take it over (a node that died mid-campaign is replaced after this).
    pub lease_secs: u64,
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            enabled: false,
            fcm_service_account_json_path: String::new(),
            fcm_endpoint: "https://fcm.googleapis.com".into(),
            apns_team_id: String::new(),
            apns_key_id: String::new(),
            apns_private_key_path: String::new(),
            apns_topic: String::new(),
            apns_endpoint: "https://api.push.apple.com".into(),
            webpush_vapid_private_key: String::new(),
            webpush_vapid_contact: String::new(),
            retry_max_attempts: 5,
            publish_status_ttl_days: 30,
            dispatch_concurrency: 64,
            shard_size: 500,
            lease_secs: 60,
        }
    }
}

impl std::fmt::Debug for PushSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("PushSection")
            .field("enabled", &self.enabled)
            .field(
                "fcm_service_account_json_path",
                &self.fcm_service_account_json_path,
            )
            .field("fcm_endpoint", &self.fcm_endpoint)
            .field("apns_team_id", &self.apns_team_id)
            .field("apns_key_id", &self.apns_key_id)
            .field("apns_private_key_path", &self.apns_private_key_path)
            .field("apns_topic", &self.apns_topic)
            .field("apns_endpoint", &self.apns_endpoint)
            .field(
                "webpush_vapid_private_key",
                &secret(&self.webpush_vapid_private_key),
            )
            .field("webpush_vapid_contact", &self.webpush_vapid_contact)
            .field("retry_max_attempts", &self.retry_max_attempts)
            .field("publish_status_ttl_days", &self.publish_status_ttl_days)
            .field("dispatch_concurrency", &self.dispatch_concurrency)
            .field("shard_size", &self.shard_size)
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

impl PushSection {
    /// Whether FCM / APNs / Web Push credentials are configured.
    pub fn providers(&self) -> (bool, bool, bool) {
        (
            !self.fcm_service_account_json_path.is_empty(),
            !self.apns_private_key_path.is_empty(),
            !self.webpush_vapid_private_key.is_empty(),
        )
    }
}

/// Read `PUSH_*` into `s`.
pub(super) fn apply_env(
    s: &mut NodeSettings,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let p = &mut s.push;
    if let Some(v) = get("PUSH_ENABLED") {
        p.enabled = super::parse_bool("PUSH_ENABLED", &v)?;
    }
    let strings: [(&str, &mut String); 9] = [
        (
            "PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH",
            &mut p.fcm_service_account_json_path,
        ),
        ("PUSH_FCM_ENDPOINT", &mut p.fcm_endpoint),
        ("PUSH_APNS_TEAM_ID", &mut p.apns_team_id),
        ("PUSH_APNS_KEY_ID", &mut p.apns_key_id),
        ("PUSH_APNS_PRIVATE_KEY_PATH", &mut p.apns_private_key_path),
        ("PUSH_APNS_TOPIC", &mut p.apns_topic),
        ("PUSH_APNS_ENDPOINT", &mut p.apns_endpoint),
        (
            "PUSH_WEBPUSH_VAPID_PRIVATE_KEY",
            &mut p.webpush_vapid_private_key,
        ),
        ("PUSH_WEBPUSH_VAPID_CONTACT", &mut p.webpush_vapid_contact),
    ];
    for (name, field) in strings {
        if let Some(v) = get(name) {
            *field = v.trim().to_owned();
        }
    }
    let count = "a whole number";
    super::num_env(
        get,
        "PUSH_RETRY_MAX_ATTEMPTS",
        count,
        &mut p.retry_max_attempts,
    )?;
    super::num_env(
        get,
        "PUSH_PUBLISH_STATUS_TTL_DAYS",
        "days",
        &mut p.publish_status_ttl_days,
    )?;
    super::num_env(
        get,
        "PUSH_DISPATCH_CONCURRENCY",
        count,
        &mut p.dispatch_concurrency,
    )?;
    super::num_env(get, "PUSH_SHARD_SIZE", count, &mut p.shard_size)?;
    super::num_env(get, "PUSH_LEASE_SECS", "seconds", &mut p.lease_secs)?;
    Ok(())
}

/// Refuse push settings that are set but cannot work.
pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    let p = &s.push;
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let defaults = PushSection::default();
    if !p.enabled {
        let set = p.providers();
        if set.0 || set.1 || set.2 || !p.apns_team_id.is_empty() {
            return bad("push provider credentials are set but PUSH_ENABLED is not true".into());
        }
        return Ok(());
    }
    if !cfg!(feature = "push") {
        return bad(
            "PUSH_ENABLED=true but this build has no push support (cargo feature `push`)".into(),
        );
    }
    let (fcm, apns, web) = p.providers();
    if !fcm && !apns && !web {
        return bad(
            "PUSH_ENABLED=true but no provider is configured: set PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH, \
             PUSH_APNS_PRIVATE_KEY_PATH (with PUSH_APNS_TEAM_ID, PUSH_APNS_KEY_ID, PUSH_APNS_TOPIC) \
             or PUSH_WEBPUSH_VAPID_PRIVATE_KEY (with PUSH_WEBPUSH_VAPID_CONTACT)"
                .into(),
        );
    }
    let apns_parts = [&p.apns_team_id, &p.apns_key_id, &p.apns_topic];
    if apns && apns_parts.iter().any(|v| v.is_empty()) {
        return bad("APNs needs PUSH_APNS_TEAM_ID, PUSH_APNS_KEY_ID and PUSH_APNS_TOPIC with PUSH_APNS_PRIVATE_KEY_PATH".into());
    }
    if !apns && apns_parts.iter().any(|v| !v.is_empty()) {
        return bad("PUSH_APNS_* is set without PUSH_APNS_PRIVATE_KEY_PATH".into());
    }
    if web && p.webpush_vapid_contact.is_empty() {
        return bad(
            "Web Push needs PUSH_WEBPUSH_VAPID_CONTACT (mailto: or https: URL) with the VAPID key"
                .into(),
        );
    }
    if !web && !p.webpush_vapid_contact.is_empty() {
        return bad(
            "PUSH_WEBPUSH_VAPID_CONTACT is set without PUSH_WEBPUSH_VAPID_PRIVATE_KEY".into(),
        );
    }
    if !fcm && p.fcm_endpoint != defaults.fcm_endpoint {
        return bad("PUSH_FCM_ENDPOINT is set without PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH".into());
    }
    if !apns && p.apns_endpoint != defaults.apns_endpoint {
        return bad("PUSH_APNS_ENDPOINT is set without PUSH_APNS_PRIVATE_KEY_PATH".into());
    }
    if apns && p.apns_endpoint.starts_with("https://") && !cfg!(feature = "webhooks-tls") {
        return bad(format!(
            "PUSH_APNS_ENDPOINT {:?} needs TLS: build with the `webhooks-tls` feature (rustls)",
            p.apns_endpoint
        ));
    }
    if fcm && p.fcm_endpoint.starts_with("https://") && !cfg!(feature = "webhooks-tls") {
        return bad(format!(
            "PUSH_FCM_ENDPOINT {:?} needs TLS: build with the `webhooks-tls` feature (rustls)",
            p.fcm_endpoint
        ));
    }
    if p.retry_max_attempts == 0 || p.publish_status_ttl_days == 0 {
        return bad(
            "PUSH_RETRY_MAX_ATTEMPTS and PUSH_PUBLISH_STATUS_TTL_DAYS must be at least 1".into(),
        );
    }
    if p.lease_secs == 0 {
        return bad("PUSH_LEASE_SECS must be at least 1".into());
    }
    if p.dispatch_concurrency == 0 || p.shard_size == 0 || p.shard_size > 10_000 {
        return bad(
            "PUSH_DISPATCH_CONCURRENCY must be ≥ 1 and PUSH_SHARD_SIZE between 1 and 10000".into(),
        );
    }
    if !matches!(
        s.queue.driver.as_str(),
        "memory" | "redis" | "redis-cluster"
    ) {
        return bad(format!(
            "push needs QUEUE_DRIVER memory, redis or redis-cluster, not {:?}",
            s.queue.driver
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use crate::config::{CliOverrides, NodeSettings};

    fn load(pairs: &[(&str, &str)]) -> Result<NodeSettings, String> {
        // One app from the environment: the library serves no app it was not given.
        let app = [
            ("SOCKUDO_DEFAULT_APP_ID", "app"),
            ("SOCKUDO_DEFAULT_APP_KEY", "key"),
            ("SOCKUDO_DEFAULT_APP_SECRET", "a-secret-of-the-test"),
        ];
        let env: HashMap<String, String> = app
            .iter()
            .chain(pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NodeSettings::load(&CliOverrides::default(), &env).map_err(|e| e.to_string())
    }

    #[test]
    fn what_is_set_but_cannot_work_is_refused() {
        let err = |pairs: &[(&str, &str)]| load(pairs).unwrap_err();
        assert!(err(&[("PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH", "/x.json")]).contains("PUSH_ENABLED"));
        assert!(err(&[("PUSH_ENABLED", "maybe")]).contains("PUSH_ENABLED"));
        if !cfg!(feature = "push") {
            assert!(err(&[("PUSH_ENABLED", "true")]).contains("feature `push`"));
            return;
        }
        assert!(err(&[("PUSH_ENABLED", "true")]).contains("no provider"));
        let apns = err(&[
            ("PUSH_ENABLED", "1"),
            ("PUSH_APNS_PRIVATE_KEY_PATH", "/k.p8"),
        ]);
        assert!(apns.contains("PUSH_APNS_TEAM_ID"), "{apns}");
        let web = err(&[
            ("PUSH_ENABLED", "1"),
            ("PUSH_WEBPUSH_VAPID_PRIVATE_KEY", "k"),
        ]);
        assert!(web.contains("PUSH_WEBPUSH_VAPID_CONTACT"), "{web}");
        let orphan = err(&[
            ("PUSH_ENABLED", "1"),
            ("PUSH_WEBPUSH_VAPID_PRIVATE_KEY", "k"),
            ("PUSH_WEBPUSH_VAPID_CONTACT", "mailto:a@b.invalid"),
            ("PUSH_FCM_ENDPOINT", "http://127.0.0.1:1"),
        ]);
        assert!(orphan.contains("PUSH_FCM_ENDPOINT"), "{orphan}");
        let zero = err(&[
            ("PUSH_ENABLED", "1"),
            ("PUSH_WEBPUSH_VAPID_PRIVATE_KEY", "k"),
            ("PUSH_WEBPUSH_VAPID_CONTACT", "mailto:a@b.invalid"),
            ("PUSH_SHARD_SIZE", "0"),
        ]);
        assert!(zero.contains("PUSH_SHARD_SIZE"), "{zero}");
    }

    #[test]
    fn a_complete_web_push_setup_loads_and_hides_its_key() {
        let s = load(&[
            ("PUSH_ENABLED", "true"),
            ("PUSH_WEBPUSH_VAPID_PRIVATE_KEY", "very-secret-vapid"),
            ("PUSH_WEBPUSH_VAPID_CONTACT", "mailto:a@b.invalid"),
            ("PUSH_RETRY_MAX_ATTEMPTS", "3"),
            ("PUSH_PUBLISH_STATUS_TTL_DAYS", "7"),
        ]);
        let s = match s {
            Ok(s) => s,
            // A build without the `push` feature refuses PUSH_ENABLED, and says so.
            Err(e) => return assert!(e.contains("feature `push`"), "{e}"),
        };
        assert_eq!(
            (s.push.retry_max_attempts, s.push.publish_status_ttl_days),
            (3, 7)
        );
        assert!(!format!("{s:?}").contains("very-secret-vapid"));
    }

    #[test]
    fn the_vapid_key_cannot_come_from_the_config_file() {
        let toml = "[push]\nwebpush_vapid_private_key = \"k\"\n";
        assert!(NodeSettings::from_toml(toml, "t.toml").is_err());
    }
}
