//! Settings of the Pulsar (`ADAPTER_DRIVER=pulsar`) and Apache Iggy (`ADAPTER_DRIVER=iggy`)
//! adapters: `PULSAR_URL`, `PULSAR_TOKEN`, `IGGY_CONNECTION_STRING`, `IGGY_STREAM` (and the
//! `[pulsar]` / `[iggy]` TOML sections). Checked at start; `Debug` hides token and password.

use serde::Deserialize;

use super::{ConfigError, NodeSettings};

/// `[pulsar]`: the broker of `ADAPTER_DRIVER=pulsar`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PulsarSection {
    /// `pulsar://host:port` or `pulsar+ssl://host:port` (`PULSAR_URL`).
    pub url: String,
    /// Token of the broker's token authentication (`PULSAR_TOKEN`).
    pub token: Option<String>,
}

impl Default for PulsarSection {
    fn default() -> Self {
        PulsarSection {
            url: "pulsar://127.0.0.1:6650".into(),
            token: None,
        }
    }
}

impl std::fmt::Debug for PulsarSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSection")
            .field("url", &super::redact_url(&self.url))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `[iggy]`: the server and stream of `ADAPTER_DRIVER=iggy`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IggySection {
    /// `iggy://user:password@host:port` (`IGGY_CONNECTION_STRING`).
    pub connection_string: String,
    /// The Iggy stream that holds the cluster's topics (`IGGY_STREAM`).
    pub stream: String,
}

impl Default for IggySection {
    fn default() -> Self {
        IggySection {
            connection_string: "iggy://iggy:iggy@127.0.0.1:8090".into(),
            stream: "sockudo".into(),
        }
    }
}

impl std::fmt::Debug for IggySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IggySection")
            .field(
                "connection_string",
                &super::redact_url(&self.connection_string),
            )
            .field("stream", &self.stream)
            .finish()
    }
}

/// Read the Pulsar and Iggy variables into `s`.
pub(super) fn apply_env(s: &mut NodeSettings, get: &impl Fn(&str) -> Option<String>) {
    if let Some(v) = get("PULSAR_URL") {
        s.pulsar.url = v;
    }
    if let Some(v) = get("PULSAR_TOKEN") {
        s.pulsar.token = Some(v);
    }
    if let Some(v) = get("IGGY_CONNECTION_STRING") {
        s.iggy.connection_string = v;
    }
    if let Some(v) = get("IGGY_STREAM") {
        s.iggy.stream = v;
    }
}

/// `host:port` with a non-empty host and a valid non-zero port.
fn host_port_ok(hp: &str) -> bool {
    match hp.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Refuse Pulsar / Iggy settings that cannot work (only for the adapter in force).
pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let adapter = s.adapter.driver.as_str();
    if !matches!(adapter, "pulsar" | "iggy") {
        return Ok(());
    }
    if !matches!(super::effective_presence(s), "redis" | "redis-cluster") {
        return bad(format!(
            "ADAPTER_DRIVER={adapter} needs a shared presence store: set PRESENCE_DRIVER=redis \
             (and REDIS_URL) or redis-cluster (and REDIS_CLUSTER_NODES); presence replicated \
             over {adapter} is not available in this version"
        ));
    }
    if adapter == "pulsar" {
        let url = s.pulsar.url.trim();
        let Some(rest) = url
            .strip_prefix("pulsar://")
            .or_else(|| url.strip_prefix("pulsar+ssl://"))
        else {
            return bad(format!(
                "PULSAR_URL {:?} must be pulsar://host:port or pulsar+ssl://host:port",
                super::redact_url(url)
            ));
        };
        if !host_port_ok(rest.trim_end_matches('/')) {
            return bad(format!(
                "PULSAR_URL {:?} must name one host:port (e.g. pulsar://127.0.0.1:6650)",
                super::redact_url(url)
            ));
        }
        if let Some(token) = &s.pulsar.token {
            if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
                return bad("PULSAR_TOKEN must be a token without spaces (or unset)".into());
            }
        }
    } else {
        let cs = s.iggy.connection_string.trim();
        let shown = super::redact_url(cs);
        let Some(rest) = cs
            .strip_prefix("iggy://")
            .or_else(|| cs.strip_prefix("iggy+tcp://"))
        else {
            return bad(format!(
                "IGGY_CONNECTION_STRING {shown:?} must be iggy://user:password@host:port \
                 (TCP; iggy+tcp:// is accepted too)"
            ));
        };
        let rest = rest.split('?').next().unwrap_or_default();
        let Some((credentials, address)) = rest.rsplit_once('@') else {
            return bad(format!(
                "IGGY_CONNECTION_STRING {shown:?} must carry user:password@ before host:port"
            ));
        };
        match credentials.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
            _ => {
                return bad(format!(
                    "IGGY_CONNECTION_STRING {shown:?}: user and password must both be given"
                ))
            }
        }
        if !host_port_ok(address.trim_end_matches('/')) {
            return bad(format!(
                "IGGY_CONNECTION_STRING {shown:?} must name one host:port"
            ));
        }
        let stream = s.iggy.stream.as_str();
        if stream.is_empty()
            || stream.len() > 255
            || !stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad(format!(
                "IGGY_STREAM {stream:?} must be 1 to 255 characters of A-Z a-z 0-9 . _ -"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::tests_support::load;
    use crate::config::NodeSettings;

    fn err(pairs: &[(&str, &str)]) -> String {
        load(pairs).unwrap_err()
    }

    #[test]
    fn pulsar_settings_are_checked() {
        if !cfg!(feature = "pulsar") {
            assert!(err(&[("ADAPTER_DRIVER", "pulsar")]).contains("not supported"));
            return;
        }
        assert!(err(&[("ADAPTER_DRIVER", "pulsar")]).contains("PRESENCE_DRIVER=redis"));
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![("ADAPTER_DRIVER", "pulsar"), ("PRESENCE_DRIVER", "redis")];
            v.extend_from_slice(extra);
            v
        };
        let s = load(&with(&[])).unwrap();
        assert_eq!(s.pulsar.url, "pulsar://127.0.0.1:6650");
        assert!(err(&with(&[("PULSAR_URL", "http://h:1")])).contains("pulsar://"));
        assert!(err(&with(&[("PULSAR_URL", "pulsar://h")])).contains("host:port"));
        assert!(err(&with(&[("PULSAR_URL", "pulsar://h:0")])).contains("host:port"));
        assert!(err(&with(&[("PULSAR_TOKEN", "a b")])).contains("PULSAR_TOKEN"));
        let s = load(&with(&[
            ("PULSAR_URL", "pulsar+ssl://broker:6651"),
            ("PULSAR_TOKEN", "pulsar-secret-token"),
        ]))
        .unwrap();
        assert_eq!(s.pulsar.url, "pulsar+ssl://broker:6651");
        assert_eq!(s.pulsar.token.as_deref(), Some("pulsar-secret-token"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("pulsar-secret-token"), "{shown}");
        // The TOML section.
        let t = NodeSettings::from_toml(
            "[adapter]\ndriver = \"pulsar\"\n[pulsar]\nurl = \"pulsar://b:6650\"\ntoken = \"t\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(t.pulsar.url, "pulsar://b:6650");
        assert_eq!(t.pulsar.token.as_deref(), Some("t"));
    }

    #[test]
    fn iggy_settings_are_checked() {
        if !cfg!(feature = "iggy") {
            assert!(err(&[("ADAPTER_DRIVER", "iggy")]).contains("not supported"));
            return;
        }
        assert!(err(&[("ADAPTER_DRIVER", "iggy")]).contains("PRESENCE_DRIVER=redis"));
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![("ADAPTER_DRIVER", "iggy"), ("PRESENCE_DRIVER", "redis")];
            v.extend_from_slice(extra);
            v
        };
        let s = load(&with(&[])).unwrap();
        assert_eq!(s.iggy.stream, "sockudo");
        for (cs, says) in [
            ("http://u:p@h:1", "iggy://"),
            ("iggy://h:8090", "user:password@"),
            ("iggy://u@h:8090", "user and password"),
            ("iggy://u:@h:8090", "user and password"),
            ("iggy://u:p@h", "host:port"),
        ] {
            assert!(
                err(&with(&[("IGGY_CONNECTION_STRING", cs)])).contains(says),
                "{cs}"
            );
        }
        assert!(err(&with(&[("IGGY_STREAM", "a/b")])).contains("IGGY_STREAM"));
        let s = load(&with(&[
            (
                "IGGY_CONNECTION_STRING",
                "iggy://admin:iggy-secret-pw@10.0.0.1:8090",
            ),
            ("IGGY_STREAM", "prod.rt"),
        ]))
        .unwrap();
        assert_eq!(s.iggy.stream, "prod.rt");
        let shown = format!("{s:?}");
        assert!(!shown.contains("iggy-secret-pw"), "{shown}");
    }
}
