//! `[rabbitmq]`: the broker of `ADAPTER_DRIVER=rabbitmq` (`RABBITMQ_URL`,
//! `RABBITMQ_MAX_MESSAGE_BYTES`), read and checked at start.

use serde::Deserialize;

use super::{ConfigError, NodeSettings};

/// RabbitMQ's own ceiling for `max_message_size` (512 MiB).
const BROKER_CEILING: usize = 512 * 1024 * 1024;

/// `[rabbitmq]`. `Debug` hides the URL's credentials.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitmqSection {
    /// `RABBITMQ_URL`: `amqp://user:pass@host:port/vhost` (vhost URL-encoded, `%2f` is `/`).
    pub url: String,
    /// `RABBITMQ_MAX_MESSAGE_BYTES`: the broker's `max_message_size` (default 128 MiB, the
    /// broker's default); larger messages are refused before they are published.
    pub max_message_bytes: usize,
}

impl Default for RabbitmqSection {
    fn default() -> Self {
        RabbitmqSection {
            url: "amqp://127.0.0.1:5672/%2f".into(),
            max_message_bytes: 128 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for RabbitmqSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitmqSection")
            .field("url", &super::redact_url(&self.url))
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// Read `RABBITMQ_*` into `s`.
pub(super) fn apply_env(
    s: &mut NodeSettings,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("RABBITMQ_URL") {
        s.rabbitmq.url = v;
    }
    if let Some(v) = get("RABBITMQ_MAX_MESSAGE_BYTES") {
        s.rabbitmq.max_message_bytes = v.trim().parse().map_err(|_| ConfigError::InvalidEnv {
            name: "RABBITMQ_MAX_MESSAGE_BYTES",
            value: v.clone(),
            expected: "a whole number of bytes",
        })?;
    }
    Ok(())
}

/// The rules of `ADAPTER_DRIVER=rabbitmq` (nothing is checked for other adapters).
pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    if s.adapter.driver != "rabbitmq" {
        return Ok(());
    }
    let bad = |m: String| Err(ConfigError::Invalid(m));
    if !matches!(super::effective_presence(s), "redis" | "redis-cluster") {
        return bad(
            "ADAPTER_DRIVER=rabbitmq needs a shared presence store: set \
             PRESENCE_DRIVER=redis (and REDIS_URL) or redis-cluster (and REDIS_CLUSTER_NODES); \
             presence replicated over RabbitMQ is not available in this version"
                .into(),
        );
    }
    let url = s.rabbitmq.url.trim();
    let shown = super::redact_url(url);
    if url.starts_with("amqps://") {
        return bad(format!(
            "RABBITMQ_URL {shown:?}: amqps:// (TLS) is not supported by this build; use amqp://"
        ));
    }
    let Some(rest) = url.strip_prefix("amqp://") else {
        return bad(format!(
            "RABBITMQ_URL {shown:?} must look like amqp://user:pass@host:port/vhost"
        ));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return bad(format!("RABBITMQ_URL {shown:?} names no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return bad(format!("RABBITMQ_URL {shown:?}: {port:?} is not a port"));
        }
    }
    let max = s.rabbitmq.max_message_bytes;
    if max < s.max_frame_bytes || max > BROKER_CEILING {
        return bad(format!(
            "RABBITMQ_MAX_MESSAGE_BYTES = {max} must be between MAX_FRAME_BYTES ({}) and \
             {BROKER_CEILING} (RabbitMQ's ceiling); set it to the broker's max_message_size",
            s.max_frame_bytes
        ));
    }
    if s.cluster.prefix.starts_with("amq.") {
        return bad(format!(
            "CLUSTER_PREFIX {:?} names the RabbitMQ exchange: names starting with \"amq.\" are \
             reserved by the broker",
            s.cluster.prefix
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::tests_support::load;
    use crate::config::NodeSettings;

    #[test]
    fn rabbitmq_settings_are_checked() {
        if !cfg!(feature = "rabbitmq") {
            let e = load(&[("ADAPTER_DRIVER", "rabbitmq")]).unwrap_err();
            assert!(e.contains("not supported"), "{e}");
            return;
        }
        let base = [("ADAPTER_DRIVER", "rabbitmq"), ("PRESENCE_DRIVER", "redis")];
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            load(&v)
        };
        let e = load(&[("ADAPTER_DRIVER", "rabbitmq")]).unwrap_err();
        assert!(e.contains("PRESENCE_DRIVER=redis"), "{e}");
        let s = with(&[("RABBITMQ_URL", "amqp://u:pw@mq.internal:5673/sockudo")]).unwrap();
        assert_eq!(s.rabbitmq.url, "amqp://u:pw@mq.internal:5673/sockudo");
        assert_eq!(s.rabbitmq.max_message_bytes, 128 * 1024 * 1024);
        let shown = format!("{:?}", s.rabbitmq);
        assert!(
            !shown.contains("pw") && shown.contains("mq.internal"),
            "{shown}"
        );
        for (url, says) in [
            ("amqps://u:secret@h/v", "amqps://"),
            ("http://h:1", "amqp://"),
            ("amqp:///v", "no host"),
            ("amqp://h:99999/v", "not a port"),
        ] {
            let e = with(&[("RABBITMQ_URL", url)]).unwrap_err();
            assert!(e.contains(says) && !e.contains("secret"), "{url}: {e}");
        }
        let e = with(&[("RABBITMQ_MAX_MESSAGE_BYTES", "many")]).unwrap_err();
        assert!(e.contains("RABBITMQ_MAX_MESSAGE_BYTES"), "{e}");
        let e = with(&[("RABBITMQ_MAX_MESSAGE_BYTES", "1000")]).unwrap_err();
        assert!(e.contains("MAX_FRAME_BYTES"), "{e}");
        let s = with(&[("RABBITMQ_MAX_MESSAGE_BYTES", "1048576")]).unwrap();
        assert_eq!(s.rabbitmq.max_message_bytes, 1 << 20);
        let e = with(&[("CLUSTER_PREFIX", "amq.x")]).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let s = NodeSettings::from_toml(
            "[rabbitmq]\nurl = \"amqp://h:5672/%2f\"\nmax_message_bytes = 2097152\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(s.rabbitmq.url, "amqp://h:5672/%2f");
        assert_eq!(s.rabbitmq.max_message_bytes, 2 << 20);
    }
}
