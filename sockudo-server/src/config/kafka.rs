//! `[kafka]` / `KAFKA_*`: the brokers of `ADAPTER_DRIVER=kafka` and how to authenticate.
//! Checked at start: what the client cannot do (TLS, GSSAPI, OAUTHBEARER) is refused with a
//! message, never silently ignored.

use serde::Deserialize;

use super::{ConfigError, NodeSettings};

/// `[kafka]`: bootstrap brokers and security of `ADAPTER_DRIVER=kafka`. `Debug` hides the
/// SASL password.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Comma-separated `host:port` (`KAFKA_BROKERS`).
    pub brokers: String,
    /// `PLAINTEXT` (default) or `SASL_PLAINTEXT` (`KAFKA_SECURITY_PROTOCOL`).
    pub security_protocol: String,
    /// `PLAIN` (default with SASL), `SCRAM-SHA-256` or `SCRAM-SHA-512`
    /// (`KAFKA_SASL_MECHANISM`).
    pub sasl_mechanism: Option<String>,
    /// `KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<String>,
    /// `KAFKA_SASL_PASSWORD`.
    pub sasl_password: Option<String>,
    /// Partitions of the cluster's topic when this node creates it (default 4).
    pub partitions: i32,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: "127.0.0.1:9092".into(),
            security_protocol: "PLAINTEXT".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            partitions: 4,
        }
    }
}

impl std::fmt::Debug for KafkaSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSection")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl KafkaSection {
    /// The broker list, trimmed, empty entries dropped.
    pub fn broker_list(&self) -> Vec<String> {
        self.brokers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether SASL is on (`SASL_PLAINTEXT`).
    pub fn sasl(&self) -> bool {
        self.security_protocol
            .trim()
            .eq_ignore_ascii_case("SASL_PLAINTEXT")
    }

    /// The SASL mechanism name in force (upper case; `PLAIN` when unset).
    pub fn mechanism(&self) -> String {
        self.sasl_mechanism
            .as_deref()
            .map(|m| m.trim().to_ascii_uppercase())
            .unwrap_or_else(|| "PLAIN".into())
    }

    /// The Kafka topic of the cluster with prefix `prefix` (one topic per cluster).
    pub fn topic(prefix: &str) -> String {
        format!("sockudo.{prefix}")
    }
}

/// Read `KAFKA_*` into `s`.
pub(super) fn apply_env(s: &mut NodeSettings, get: &impl Fn(&str) -> Option<String>) {
    if let Some(v) = get("KAFKA_BROKERS") {
        s.kafka.brokers = v;
    }
    if let Some(v) = get("KAFKA_SECURITY_PROTOCOL") {
        s.kafka.security_protocol = v;
    }
    if let Some(v) = get("KAFKA_SASL_MECHANISM") {
        s.kafka.sasl_mechanism = Some(v);
    }
    if let Some(v) = get("KAFKA_SASL_USERNAME") {
        s.kafka.sasl_username = Some(v);
    }
    if let Some(v) = get("KAFKA_SASL_PASSWORD") {
        s.kafka.sasl_password = Some(v);
    }
}

/// Refuse Kafka settings that cannot work (called when `ADAPTER_DRIVER=kafka`).
pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let k = &s.kafka;
    if !matches!(super::effective_presence(s), "redis" | "redis-cluster") {
        return bad("ADAPTER_DRIVER=kafka needs a shared presence store: set \
             PRESENCE_DRIVER=redis (and REDIS_URL) or redis-cluster (and REDIS_CLUSTER_NODES); \
             presence replicated over Kafka is not available in this version"
            .into());
    }
    let brokers = k.broker_list();
    if brokers.is_empty() {
        return bad("KAFKA_BROKERS names no broker (comma-separated host:port)".into());
    }
    if let Some(b) = brokers.iter().find(|b| {
        b.contains("://")
            || b.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || !p.parse::<u16>().is_ok_and(|p| p != 0))
    }) {
        return bad(format!(
            "KAFKA_BROKERS entry {b:?} must be host:port (no scheme)"
        ));
    }
    match k.security_protocol.trim().to_ascii_uppercase().as_str() {
        "PLAINTEXT" | "SASL_PLAINTEXT" => {}
        p @ ("SSL" | "SASL_SSL") => {
            return bad(format!(
                "KAFKA_SECURITY_PROTOCOL={p} (TLS) is not supported by this build: use \
                 PLAINTEXT or SASL_PLAINTEXT (e.g. inside a private network or through a TLS \
                 sidecar)"
            ))
        }
        p => {
            return bad(format!(
                "KAFKA_SECURITY_PROTOCOL={p:?} is not one of PLAINTEXT, SASL_PLAINTEXT"
            ))
        }
    }
    let any_sasl =
        k.sasl_mechanism.is_some() || k.sasl_username.is_some() || k.sasl_password.is_some();
    if !k.sasl() {
        if any_sasl {
            return bad("KAFKA_SASL_* settings need KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT".into());
        }
    } else {
        let m = k.mechanism();
        if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
            return bad(format!(
                "KAFKA_SASL_MECHANISM={m:?} is not supported: use PLAIN, SCRAM-SHA-256 or \
                 SCRAM-SHA-512"
            ));
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        if !set(&k.sasl_username) || !set(&k.sasl_password) {
            return bad(
                "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME and \
                 KAFKA_SASL_PASSWORD"
                    .into(),
            );
        }
    }
    if !(1..=10_000).contains(&k.partitions) {
        return bad(format!(
            "[kafka] partitions = {} must be between 1 and 10000",
            k.partitions
        ));
    }
    let topic = KafkaSection::topic(&s.cluster.prefix);
    if topic.len() > 249 {
        return bad("CLUSTER_PREFIX is too long for a Kafka topic name (249 characters)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::config::tests_support::load;
    use crate::config::NodeSettings;

    fn err(pairs: &[(&str, &str)]) -> String {
        let mut all = vec![("ADAPTER_DRIVER", "kafka"), ("PRESENCE_DRIVER", "redis")];
        all.extend_from_slice(pairs);
        load(&all).unwrap_err()
    }

    #[test]
    fn kafka_settings_are_checked() {
        if !cfg!(feature = "kafka") {
            assert!(load(&[("ADAPTER_DRIVER", "kafka")])
                .unwrap_err()
                .contains("not supported"));
            return;
        }
        assert!(load(&[("ADAPTER_DRIVER", "kafka")])
            .unwrap_err()
            .contains("PRESENCE_DRIVER=redis"));
        let s = load(&[
            ("ADAPTER_DRIVER", "kafka"),
            ("PRESENCE_DRIVER", "redis"),
            ("KAFKA_BROKERS", " k1:9092, k2:9093 ,"),
            ("CLUSTER_PREFIX", "prod"),
        ])
        .unwrap();
        assert_eq!(s.kafka.broker_list(), vec!["k1:9092", "k2:9093"]);
        assert!(!s.kafka.sasl());
        assert_eq!(
            super::KafkaSection::topic(&s.cluster.prefix),
            "sockudo.prod"
        );
        for broker in [",", "k1", "kafka://k1:9092", "k1:x", ":9092", "k1:0"] {
            assert!(
                err(&[("KAFKA_BROKERS", broker)]).contains("KAFKA_BROKERS"),
                "{broker:?}"
            );
        }
        assert!(err(&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")]).contains("TLS"));
        assert!(err(&[("KAFKA_SECURITY_PROTOCOL", "SSL")]).contains("not supported"));
        assert!(err(&[("KAFKA_SECURITY_PROTOCOL", "bogus")]).contains("PLAINTEXT"));
        assert!(err(&[("KAFKA_SASL_USERNAME", "u")]).contains("SASL_PLAINTEXT"));
        let sasl = [
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_USERNAME", "u"),
        ];
        assert!(err(&sasl).contains("KAFKA_SASL_PASSWORD"));
        let mut gssapi = sasl.to_vec();
        gssapi.extend([
            ("KAFKA_SASL_PASSWORD", "p"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
        ]);
        assert!(err(&gssapi).contains("SCRAM-SHA-512"));
        let s = load(&[
            ("ADAPTER_DRIVER", "kafka"),
            ("PRESENCE_DRIVER", "redis-cluster"),
            ("REDIS_CLUSTER_NODES", "r:7000"),
            ("KAFKA_BROKERS", "k:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-256"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "kafka-secret"),
        ])
        .unwrap();
        assert!(s.kafka.sasl());
        assert_eq!(s.kafka.mechanism(), "SCRAM-SHA-256");
        let shown = format!("{s:?}");
        assert!(!shown.contains("kafka-secret"), "{shown}");
        assert!(shown.contains("sasl_username"));
    }

    #[test]
    fn kafka_toml_section() {
        let s =
            NodeSettings::from_toml("[kafka]\nbrokers = \"a:1,b:2\"\npartitions = 8\n", "f.toml")
                .unwrap();
        assert_eq!(s.kafka.broker_list(), vec!["a:1", "b:2"]);
        assert_eq!(s.kafka.partitions, 8);
        assert!(NodeSettings::from_toml("[kafka]\nbogus = 1\n", "f.toml").is_err());
    }
}
