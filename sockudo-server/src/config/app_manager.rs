//! Where apps come from (`APP_MANAGER_*`, `DATABASE_URL`) and the admin API (`ADMIN_*`).

use serde::Deserialize;

use super::{parse_env, ConfigError, NodeSettings};

/// `[app_manager]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AppManagerSection {
    /// `static` (apps from this config), `postgres` or `mysql` (apps from `DATABASE_URL`).
    pub driver: String,
    /// The apps table (`APP_MANAGER_TABLE`).
    pub table: String,
    /// Seconds a looked-up app is served from the node's cache before it is read again
    /// (`APP_MANAGER_CACHE_TTL`).
    pub cache_ttl: u64,
    /// Seconds between re-reads of every cached app, which is how edits made directly in
    /// the database reach the node (`APP_MANAGER_POLL_INTERVAL`); also how long an unknown key
    /// is remembered.
    pub poll_interval: u64,
}

impl Default for AppManagerSection {
    fn default() -> Self {
        AppManagerSection {
            driver: "static".into(),
            table: "applications".into(),
            cache_ttl: 60,
            poll_interval: 10,
        }
    }
}

impl AppManagerSection {
    /// Whether apps come from a database.
    pub fn is_sql(&self) -> bool {
        matches!(self.driver.as_str(), "postgres" | "mysql")
    }
}

/// `[admin]`: the apps admin API, on its own listener; off unless both are set.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `ADMIN_PORT` (0: any free port, for tests; the bound address is logged).
    pub port: Option<u16>,
    /// `ADMIN_TOKEN`: the bearer token every admin request carries.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSection")
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl AdminSection {
    /// Whether the admin API is configured.
    pub fn enabled(&self) -> bool {
        self.port.is_some() && self.token.is_some()
    }
}

/// Shortest admin token accepted: a guessable token would hand out every app's secret.
pub const MIN_ADMIN_TOKEN_LEN: usize = 24;

pub(super) fn apply_env(
    s: &mut NodeSettings,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("APP_MANAGER_TABLE") {
        s.app_manager.table = v;
    }
    if let Some(v) = get("APP_MANAGER_CACHE_TTL") {
        s.app_manager.cache_ttl = parse_env("APP_MANAGER_CACHE_TTL", &v, "whole seconds")?;
    }
    if let Some(v) = get("APP_MANAGER_POLL_INTERVAL") {
        s.app_manager.poll_interval = parse_env("APP_MANAGER_POLL_INTERVAL", &v, "whole seconds")?;
    }
    if let Some(v) = get("ADMIN_PORT") {
        s.admin.port = Some(parse_env("ADMIN_PORT", &v, "a port number")?);
    }
    if let Some(v) = get("ADMIN_TOKEN") {
        s.admin.token = Some(v);
    }
    Ok(())
}

/// The drivers this build has.
fn drivers() -> Vec<&'static str> {
    let mut d = vec!["static"];
    if cfg!(feature = "postgres") {
        d.push("postgres");
    }
    if cfg!(feature = "mysql") {
        d.push("mysql");
    }
    d
}

pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let m = &s.app_manager;
    if !drivers().contains(&m.driver.as_str()) {
        let hint = if matches!(m.driver.as_str(), "postgres" | "mysql") {
            " (build sockudo-server with --features postgres,mysql)"
        } else {
            ""
        };
        return bad(format!(
            "app_manager.driver (APP_MANAGER_DRIVER) = {:?} is not supported by this build \
             (supported: {}){hint}",
            m.driver,
            drivers().join(", ")
        ));
    }
    let url = s.database_url.as_ref().map(|u| u.0.as_str());
    if !m.is_sql() {
        if url.is_some() {
            // Accepting it would leave an operator believing apps come from the database.
            return bad(
                "DATABASE_URL is set, but APP_MANAGER_DRIVER=static reads apps from the config \
                 file: set APP_MANAGER_DRIVER=postgres or mysql, or unset DATABASE_URL"
                    .into(),
            );
        }
        if s.admin.port.is_some() || s.admin.token.is_some() {
            return bad(
                "the admin API (ADMIN_PORT, ADMIN_TOKEN) manages apps in a database: it needs \
                 APP_MANAGER_DRIVER=postgres or mysql"
                    .into(),
            );
        }
        return Ok(());
    }
    let Some(url) = url else {
        return bad(format!(
            "APP_MANAGER_DRIVER={} needs DATABASE_URL",
            m.driver
        ));
    };
    let scheme_ok = match m.driver.as_str() {
        "postgres" => url.starts_with("postgres://") || url.starts_with("postgresql://"),
        _ => url.starts_with("mysql://") || url.starts_with("mariadb://"),
    };
    if !scheme_ok {
        return bad(format!(
            "DATABASE_URL must be a {}:// URL for APP_MANAGER_DRIVER={}",
            m.driver, m.driver
        ));
    }
    if !s.apps.is_empty() {
        return bad(format!(
            "[[apps]] are configured, but APP_MANAGER_DRIVER={} reads apps from the database: \
             remove them (create apps through the admin API or in the table)",
            m.driver
        ));
    }
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    sockudo_core::app::validate_table(&m.table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if m.cache_ttl == 0 || m.poll_interval == 0 {
        return bad(
            "APP_MANAGER_CACHE_TTL and APP_MANAGER_POLL_INTERVAL must be at least 1 second".into(),
        );
    }
    validate_admin(s)
}

fn validate_admin(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let a = &s.admin;
    match (&a.port, &a.token) {
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => {
            bad("ADMIN_PORT and ADMIN_TOKEN go together (the admin API is off without both)".into())
        }
        (Some(port), Some(token)) => {
            if token.chars().count() < MIN_ADMIN_TOKEN_LEN || token.trim() != token {
                return bad(format!(
                    "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters without \
                     surrounding spaces"
                ));
            }
            if *port != 0 && (*port == s.port || *port == s.metrics_port) {
                return bad(
                    "ADMIN_PORT must differ from PORT and METRICS_PORT: the admin API has its \
                     own listener"
                        .into(),
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests_support::load;
    use crate::config::NodeSettings;

    const TOKEN: &str = "0123456789abcdef01234567";

    #[test]
    fn static_driver_refuses_database_and_admin_settings() {
        assert!(load(&[("DATABASE_URL", "postgres://h/db")])
            .unwrap_err()
            .contains("DATABASE_URL"));
        let e = load(&[("ADMIN_PORT", "9700"), ("ADMIN_TOKEN", TOKEN)]).unwrap_err();
        assert!(e.contains("admin API"), "{e}");
        assert!(load(&[("APP_MANAGER_DRIVER", "oracle")])
            .unwrap_err()
            .contains("APP_MANAGER_DRIVER"));
    }

    #[test]
    fn sql_driver_settings_are_checked() {
        if !cfg!(feature = "postgres") {
            let e = load(&[("APP_MANAGER_DRIVER", "postgres")]).unwrap_err();
            assert!(e.contains("--features"), "{e}");
            return;
        }
        let pg = [
            ("APP_MANAGER_DRIVER", "postgres"),
            ("DATABASE_URL", "postgres://u:p@h/db"),
        ];
        let s = load(&pg).unwrap();
        assert!(s.apps.is_empty(), "no dev app with a SQL driver");
        assert_eq!(
            (s.app_manager.table.as_str(), s.app_manager.poll_interval),
            ("applications", 10)
        );
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = pg.to_vec();
            v.extend_from_slice(extra);
            load(&v)
        };
        assert!(load(&pg[..1]).unwrap_err().contains("needs DATABASE_URL"));
        assert!(load(&[pg[0], ("DATABASE_URL", "mysql://h/db")])
            .unwrap_err()
            .contains("postgres://"));
        assert!(with(&[("APP_MANAGER_TABLE", "apps;drop")])
            .unwrap_err()
            .contains("APP_MANAGER_TABLE"));
        assert!(with(&[("APP_MANAGER_POLL_INTERVAL", "0")])
            .unwrap_err()
            .contains("at least 1"));
        assert!(with(&[("SOCKUDO_DEFAULT_APP_KEY", "k")])
            .unwrap_err()
            .contains("SOCKUDO_DEFAULT_APP_KEY"));
        assert!(with(&[("ADMIN_PORT", "9700")])
            .unwrap_err()
            .contains("go together"));
        assert!(with(&[("ADMIN_PORT", "9700"), ("ADMIN_TOKEN", "short")])
            .unwrap_err()
            .contains("at least"));
        assert!(with(&[("ADMIN_PORT", "6001"), ("ADMIN_TOKEN", TOKEN)])
            .unwrap_err()
            .contains("own listener"));
        let s = with(&[
            ("ADMIN_PORT", "9700"),
            ("ADMIN_TOKEN", TOKEN),
            ("APP_MANAGER_TABLE", "tenants"),
            ("APP_MANAGER_CACHE_TTL", "5"),
        ])
        .unwrap();
        assert!(s.admin.enabled());
        assert_eq!(
            (s.app_manager.table.as_str(), s.app_manager.cache_ttl),
            ("tenants", 5)
        );
        assert!(
            !format!("{s:?}").contains(TOKEN),
            "the token stays out of Debug"
        );
        let toml = NodeSettings::from_toml(
            "[app_manager]\ndriver = \"postgres\"\npoll_interval = 3\n[admin]\nport = 9700\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            (toml.app_manager.poll_interval, toml.admin.port),
            (3, Some(9700))
        );
    }
}
