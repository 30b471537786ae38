//! Where the apps of a static configuration come from when the TOML file lists none.
//!
//! The library never invents an app: either the `SOCKUDO_DEFAULT_APP_ID`, `_KEY` and `_SECRET`
//! variables describe one (all three, so a forgotten variable is an error instead of a
//! publicly known secret), or the caller opts in to the well-known development app through
//! [`CliOverrides::dev_app`]. Only the `sockudo` binary does that, and only with no
//! configuration at all; it then binds `127.0.0.1` unless a host was given.

use std::collections::HashMap;

use sockudo_core::app::{App, WebhookTarget};

use super::{parse_bool, CliOverrides, ConfigError, NodeSettings};

/// Id of the development app (public knowledge: never use it on a reachable address).
pub const DEV_APP_ID: &str = "app-id";
/// Key of the development app.
pub const DEV_APP_KEY: &str = "app-key";
/// Secret of the development app: anyone can sign API requests with it.
pub const DEV_APP_SECRET: &str = "app-secret";

/// The variables that together describe the default app.
const IDENTITY: [&str; 3] = [
    "SOCKUDO_DEFAULT_APP_ID",
    "SOCKUDO_DEFAULT_APP_KEY",
    "SOCKUDO_DEFAULT_APP_SECRET",
];
/// Optional parts of the default app.
const OPTIONS: [&str; 2] = [
    "SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES",
    "SOCKUDO_DEFAULT_APP_WEBHOOK_URL",
];

/// Fill `s.apps` for a static app manager whose file listed none; refuse default-app
/// variables that would be ignored. `host_given`: the TOML file, `HOST` or `--host` chose the
/// listen address.
pub(super) fn resolve(
    s: &mut NodeSettings,
    cli: &CliOverrides,
    env: &HashMap<String, String>,
    host_given: bool,
) -> Result<(), ConfigError> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let set: Vec<&str> = IDENTITY
        .iter()
        .chain(OPTIONS.iter())
        .copied()
        .filter(|k| get(k).is_some())
        .collect();
    if s.app_manager.is_sql() || !s.apps.is_empty() {
        if let Some(name) = set.first() {
            let source = if s.app_manager.is_sql() {
                format!(
                    "APP_MANAGER_DRIVER={} reads apps from the database",
                    s.app_manager.driver
                )
            } else {
                "the config file lists the apps ([[apps]])".to_owned()
            };
            return Err(ConfigError::Invalid(format!("{name} is set, but {source}")));
        }
        return Ok(());
    }
    let mut app = if set.is_empty() {
        if !cli.dev_app {
            return Err(ConfigError::NoApps);
        }
        if !host_given {
            // The secret is public knowledge: never reachable from another machine unless
            // the operator asked for it.
            s.host = "127.0.0.1".into();
        }
        let mut app = App::new(DEV_APP_ID, DEV_APP_KEY, DEV_APP_SECRET);
        app.enable_client_messages = true;
        app
    } else {
        let missing: Vec<&str> = IDENTITY.into_iter().filter(|k| get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "the default app needs SOCKUDO_DEFAULT_APP_ID, _KEY and _SECRET; missing: {}",
                missing.join(", ")
            )));
        }
        let [id, key, secret] = IDENTITY.map(|k| get(k).unwrap_or_default());
        let mut app = App::new(id, key, secret);
        app.enable_client_messages = true;
        app
    };
    if let Some(v) = get(OPTIONS[0]) {
        app.enable_client_messages = parse_bool(OPTIONS[0], &v)?;
    }
    // One webhook target receiving every event type: enough for a single env-described app
    // (and for tests that run the binary with nothing but the environment).
    if let Some(url) = get(OPTIONS[1]) {
        app.webhooks = vec![WebhookTarget {
            url,
            event_types: Vec::new(),
            headers: HashMap::new(),
        }];
    }
    s.apps.push(app);
    Ok(())
}

impl NodeSettings {
    /// Whether an app signs with the development secret (`app-secret`): anyone can then
    /// publish and authorize on it. The `sockudo` binary warns loudly about it.
    pub fn serves_dev_secret(&self) -> bool {
        self.apps.iter().any(|a| a.secret == DEV_APP_SECRET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests_support::env;

    fn load(cli: &CliOverrides, pairs: &[(&str, &str)]) -> Result<NodeSettings, String> {
        NodeSettings::load(cli, &env(pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_library_adds_no_app_on_its_own() {
        let e = load(&CliOverrides::default(), &[]).unwrap_err();
        assert!(e.contains("no app configured"), "{e}");
        assert!(e.contains("SOCKUDO_DEFAULT_APP_ID"), "{e}");
    }

    #[test]
    fn the_dev_app_is_opt_in_and_binds_loopback() {
        let dev = CliOverrides {
            dev_app: true,
            ..Default::default()
        };
        let s = load(&dev, &[]).unwrap();
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.port, 6001);
        let a = &s.apps[0];
        assert_eq!(
            (a.id.as_str(), a.key.as_str(), a.secret.as_str()),
            (DEV_APP_ID, DEV_APP_KEY, DEV_APP_SECRET)
        );
        assert!(a.enable_client_messages);
        assert!(s.serves_dev_secret());
        // An explicit host is kept (the binary warns about it).
        let s = load(&dev, &[("HOST", "0.0.0.0")]).unwrap();
        assert_eq!(s.host, "0.0.0.0");
        let cli = CliOverrides {
            host: Some("10.0.0.1".into()),
            ..dev
        };
        assert_eq!(load(&cli, &[]).unwrap().host, "10.0.0.1");
    }

    #[test]
    fn the_default_app_needs_all_three_variables() {
        let e = load(
            &CliOverrides::default(),
            &[
                ("SOCKUDO_DEFAULT_APP_KEY", "k"),
                ("SOCKUDO_DEFAULT_APP_ID", "1"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("missing: SOCKUDO_DEFAULT_APP_SECRET"), "{e}");
        let s = load(
            &CliOverrides::default(),
            &[
                ("SOCKUDO_DEFAULT_APP_ID", "1"),
                ("SOCKUDO_DEFAULT_APP_KEY", "k"),
                ("SOCKUDO_DEFAULT_APP_SECRET", "s"),
                ("SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "false"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.host, "0.0.0.0",
            "a configured app keeps the documented default"
        );
        assert!(!s.apps[0].enable_client_messages);
        assert!(!s.serves_dev_secret());
    }

    #[test]
    fn default_app_variables_next_to_file_apps_are_refused() {
        let mut s =
            NodeSettings::from_toml("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n", "f")
                .unwrap();
        let e = resolve(
            &mut s,
            &CliOverrides::default(),
            &env(&[("SOCKUDO_DEFAULT_APP_WEBHOOK_URL", "http://h/")]),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("SOCKUDO_DEFAULT_APP_WEBHOOK_URL is set"), "{e}");
    }
}
