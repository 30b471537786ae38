//! [`ClientOptions`]: where to connect and how to behave, as a consuming builder.

use std::sync::Arc;
use std::time::Duration;

use sockudo_core::protocol::ProtocolVersion;

use crate::auth::{Authorizer, SharedAuthorizer};
use crate::backoff::{Backoff, ExponentialBackoff};
use crate::continuity::GapLimits;
use crate::dedup::DedupConfig;
use crate::error::{Error, Result};

/// The `client` query parameter this crate sends.
pub const CLIENT_NAME: &str = "sockudo-rust";

/// Options of a [`Client`](crate::Client).
///
/// ```
/// use std::time::Duration;
/// use sockudo_client::{ClientOptions, Protocol};
///
/// let opts = ClientOptions::new("app-key")
///     .host("realtime.example.com")
///     .tls(true)
///     .protocol(Protocol::V2)
///     .activity_timeout(Duration::from_secs(60))
///     .dedup_window(4096, Duration::from_secs(300));
/// assert_eq!(opts.endpoint(), "wss://realtime.example.com:443/app/app-key?protocol=2&client=sockudo-rust&version=0.1.0");
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) app_key: String,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) path: String,
    pub(crate) tls: bool,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) activity_timeout: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) resume_timeout: Duration,
    pub(crate) backoff: Arc<dyn Backoff>,
    pub(crate) max_reconnects: Option<u32>,
    pub(crate) retry_on_initial_connect: bool,
    pub(crate) dedup: DedupConfig,
    pub(crate) subscription_capacity: usize,
    pub(crate) gap_limits: GapLimits,
    pub(crate) authorizer: Option<SharedAuthorizer>,
}

/// Protocol of the connection (re-exported from sockudo-core).
pub type Protocol = ProtocolVersion;

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("endpoint", &self.endpoint())
            .field("custom_tls_config", &self.tls_config.is_some())
            .field("activity_timeout", &self.activity_timeout)
            .field("pong_timeout", &self.pong_timeout)
            .field("backoff", &self.backoff)
            .field("max_reconnects", &self.max_reconnects)
            .field("dedup", &self.dedup)
            .field("gap_limits", &self.gap_limits)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults: `ws://127.0.0.1:6001`, protocol 7, 120 s activity timeout, 30 s pong
    /// timeout, jittered exponential backoff (0.5 s … 30 s), dedup of 1024 ids / 120 s.
    pub fn new(app_key: impl Into<String>) -> Self {
        ClientOptions {
            app_key: app_key.into(),
            host: "127.0.0.1".into(),
            port: None,
            path: String::new(),
            tls: false,
            tls_config: None,
            protocol: ProtocolVersion::V1,
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            resume_timeout: Duration::from_secs(10),
            backoff: Arc::new(ExponentialBackoff::default()),
            max_reconnects: None,
            retry_on_initial_connect: false,
            dedup: DedupConfig::default(),
            subscription_capacity: 4096,
            gap_limits: GapLimits::default(),
            authorizer: None,
        }
    }

    /// Set host, port, TLS and path prefix from a base URL such as `ws://127.0.0.1:6001` or
    /// `wss://example.com/realtime`. The `/app/{key}` part and the query are added by the
    /// client: a full connect URL (with `/app/…` or `?…`) is refused, not mangled.
    pub fn url(mut self, base: &str) -> Result<Self> {
        if base.contains('?') || base.contains("/app/") {
            return Err(Error::invalid(format!(
                "{base:?} is a connect URL: give the base URL (ws://host:port or \
                 ws://host:port/prefix); the client adds /app/{{key}} and the query"
            )));
        }
        let (tls, rest) = if let Some(rest) = base.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = base.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(Error::invalid(format!(
                "unsupported URL scheme in {base:?}: use ws:// or wss://"
            )));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, rest)) => (&authority[..h.len() + 2], rest.strip_prefix(':')),
                None => {
                    return Err(Error::invalid(format!(
                        "unterminated IPv6 address in {base:?}"
                    )))
                }
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port_text {
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| Error::invalid(format!("invalid port in {base:?}")))?,
            ),
            None => None,
        };
        if host.is_empty() {
            return Err(Error::invalid(format!("no host in {base:?}")));
        }
        self.tls = tls;
        self.host = host.to_owned();
        self.port = port;
        self.path = path.trim_end_matches('/').to_owned();
        Ok(self)
    }

    /// The host to connect to (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Default: 443 with TLS, 6001 without.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// A path prefix before `/app/{key}` (for servers mounted behind a proxy path).
    pub fn path(mut self, prefix: impl Into<String>) -> Self {
        self.path = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// `wss://` with rustls and the OS trust store.
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// `wss://` with a rustls configuration of your own (private CA, client certificates).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = true;
        self.tls_config = Some(config);
        self
    }

    /// Protocol 7 (V1, default) or Sockudo V2 (resume, message ids, serials).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The most inactivity this client tolerates before it pings; the server's value is used
    /// when lower (as pusher-js does).
    pub fn activity_timeout(mut self, timeout: Duration) -> Self {
        self.activity_timeout = timeout;
        self
    }

    /// How long to wait for any frame after a ping before declaring the connection dead.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Limit on opening the WebSocket and receiving `connection_established`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit on subscribe, signin, client events and history requests.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// V2: how long a resumed channel waits for the server's verdict, and a live serial gap
    /// for its repair, before failing closed with `RecoveryFailed` (`resume_timeout`).
    /// A resumed channel's wait starts when its subscribe goes out, so time spent in the
    /// authorizer does not count. Default 10 s.
    pub fn resume_timeout(mut self, timeout: Duration) -> Self {
        self.resume_timeout = timeout;
        self
    }

    /// The reconnect delay policy (close codes 4200–4299 still retry at once first).
    pub fn backoff(mut self, backoff: impl Backoff) -> Self {
        self.backoff = Arc::new(backoff);
        self
    }

    /// Give up (state `Failed`) after this many consecutive failed reconnects. Default: never.
    pub fn max_reconnects(mut self, max: u32) -> Self {
        self.max_reconnects = Some(max);
        self
    }

    /// When true, [`Client::connect`](crate::Client::connect) returns at once and the first
    /// connection is retried like any other; when false (default) it waits for the first
    /// connection and returns its error.
    pub fn retry_on_initial_connect(mut self, retry: bool) -> Self {
        self.retry_on_initial_connect = retry;
        self
    }

    /// Remember up to `capacity` message ids per channel for up to `max_age` (0 disables).
    pub fn dedup_window(mut self, capacity: usize, max_age: Duration) -> Self {
        self.dedup = DedupConfig { capacity, max_age };
        self
    }

    /// Events buffered per subscription before a slow consumer starts losing events. The
    /// loss is never silent: the stream then yields a `RecoveryFailed` with code
    /// [`client_lagged`](crate::subscription::CODE_CLIENT_LAGGED) where events are missing.
    /// Default 4096.
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity.max(1);
        self
    }

    /// V2: how many frames may wait behind live gaps and resume verdicts, per channel and
    /// across all channels (defaults 1,000 and 10,000). Past either bound the channel gives
    /// up waiting: `RecoveryFailed` (`gap_overflow`), then the held frames.
    pub fn gap_buffer(mut self, per_channel: usize, total: usize) -> Self {
        self.gap_limits = GapLimits { per_channel, total };
        self
    }

    /// Who signs private/presence/encrypted subscriptions and signins.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Like [`authorizer`](Self::authorizer), for an already shared one.
    pub fn shared_authorizer(mut self, authorizer: SharedAuthorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// The app key connected with.
    pub fn app_key(&self) -> &str {
        &self.app_key
    }

    /// The protocol requested (V1 = protocol 7, or V2).
    pub fn protocol_version(&self) -> Protocol {
        self.protocol
    }

    /// The WebSocket URL the client opens.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let port = self.port.unwrap_or(if self.tls { 443 } else { 6001 });
        let protocol = match self.protocol {
            ProtocolVersion::V1 => "7",
            ProtocolVersion::V2 => "2",
        };
        format!(
            "{scheme}://{}:{port}{}/app/{}?protocol={protocol}&client={CLIENT_NAME}&version={}",
            self.host,
            self.path,
            self.app_key,
            env!("CARGO_PKG_VERSION")
        )
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.app_key.is_empty()
            || !self
                .app_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::invalid(format!(
                "invalid app key {:?}",
                self.app_key
            )));
        }
        if self.host.is_empty() {
            return Err(Error::invalid("empty host"));
        }
        if self.activity_timeout.is_zero() || self.pong_timeout.is_zero() {
            return Err(Error::invalid(
                "activity and pong timeouts must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let o = ClientOptions::new("k").url("ws://127.0.0.1:1234").unwrap();
        assert_eq!(
            o.endpoint(),
            format!(
                "ws://127.0.0.1:1234/app/k?protocol=7&client=sockudo-rust&version={}",
                env!("CARGO_PKG_VERSION")
            )
        );
        let o = ClientOptions::new("k")
            .url("wss://example.com/rt/")
            .unwrap()
            .protocol(Protocol::V2);
        assert!(o
            .endpoint()
            .starts_with("wss://example.com:443/rt/app/k?protocol=2&"));
        assert!(ClientOptions::new("k").url("ftp://x").is_err());
        assert!(ClientOptions::new("k").url("ws://h:notaport").is_err());
        for full in [
            "ws://h:1/app/k?protocol=7",
            "ws://h:1/app/k",
            "ws://h:1/?x=1",
        ] {
            let e = ClientOptions::new("k")
                .url(full)
                .err()
                .map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("base URL")),
                "{full}: {e:?}"
            );
        }
        let o = ClientOptions::new("k").host("h").port(80).path("/p/");
        assert!(o.endpoint().starts_with("ws://h:80/p/app/k?"));
        assert!(ClientOptions::new("bad key").validate().is_err());
    }
}
