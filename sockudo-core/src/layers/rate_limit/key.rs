//! [`KeyBy`]: which budget a request draws on.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;

use crate::layers::api_auth::AuthenticatedApp;

/// Request extension: the address of the TCP peer the request came from.
///
/// The core does not depend on axum, so it cannot read `axum::extract::ConnectInfo`; whoever
/// accepts connections inserts this instead (the Sockudo server does, for every request).
/// Without it (and without a usable `X-Forwarded-For`), [`KeyBy::ClientIp`] has no key and
/// the layer answers 500 rather than serve the request unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A caller-supplied key function; `None` exempts the request from limiting.
pub type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// How a request is mapped to a rate-limit budget.
///
/// A request whose strategy yields no key (no app for `AppAndRoute`, `Custom` returned
/// `None`) is passed through unlimited and gets no rate-limit headers; `ClientIp` without a
/// client address is rejected with 500 (a misconfigured stack must not disable the limit).
#[derive(Clone)]
#[non_exhaustive]
pub enum KeyBy {
    /// One budget per app and *route class*: the app id from the
    /// [`AuthenticatedApp`] extension (so mount this layer inside
    /// [`ApiAuthLayer`](crate::layers::ApiAuthLayer)), plus the method and the request path
    /// with identifiers normalized.
    ///
    /// The route class is derived from the path rather than given by a closure, because the
    /// Pusher API is regular REST: segments alternate between a collection name and an
    /// identifier (`apps/{id}/channels/{name}/users`), so every second segment is replaced by
    /// `*`: `GET /apps/1/channels/presence-room/users` → `GET /apps/*/channels/*/users`, and
    /// every channel shares the app's `GET /apps/*/channels/*` budget. Use [`KeyBy::Custom`]
    /// for any other grouping. Key: `app:{app_id}:{METHOD} {class}`.
    AppAndRoute,
    /// One budget per client IP (key `ip:{addr}`; IPv6 addresses are grouped by their /64,
    /// which one client usually holds whole).
    ///
    /// With `trusted_proxy_hops: 0` the [`PeerAddr`] extension is used and
    /// `X-Forwarded-For` is ignored (a client could write anything there). With `n > 0`
    /// (that many reverse proxies in front of the server, each appending the address it saw),
    /// the `n`-th entry from the right of `X-Forwarded-For` is the client: entries left of it
    /// were written by the client itself and are not trusted. If the header has fewer than `n`
    /// entries or that entry is not an IP address, [`PeerAddr`] is used.
    ClientIp {
        /// How many trusted reverse proxies append to `X-Forwarded-For`.
        trusted_proxy_hops: usize,
    },
    /// Any key computed from the request head.
    Custom(KeyFn),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AppAndRoute => f.write_str("AppAndRoute"),
            Self::ClientIp { trusted_proxy_hops } => f
                .debug_struct("ClientIp")
                .field("trusted_proxy_hops", trusted_proxy_hops)
                .finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl KeyBy {
    /// The budget key for a request head, if any.
    #[must_use]
    pub fn key(&self, parts: &Parts) -> Option<String> {
        match self {
            Self::AppAndRoute => {
                let app = parts.extensions.get::<AuthenticatedApp>()?;
                Some(format!(
                    "app:{}:{} {}",
                    app.0.id,
                    parts.method,
                    route_class(parts.uri.path())
                ))
            }
            Self::ClientIp { trusted_proxy_hops } => {
                client_ip(parts, *trusted_proxy_hops).map(|ip| format!("ip:{}", ip_key(ip)))
            }
            Self::Custom(key) => key(parts),
        }
    }
}

/// `path` with every second segment (the identifiers of a REST path) replaced by `*`.
/// Empty segments are kept as they are, so `/apps//events` does not collapse.
#[must_use]
pub fn route_class(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    for (index, segment) in trimmed.split('/').enumerate() {
        out.push('/');
        if index % 2 == 1 && !segment.is_empty() {
            out.push('*');
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// The client address per [`KeyBy::ClientIp`]. `Forwarded` (RFC 7239) is deliberately not
/// read: proxies in front of Sockudo set `X-Forwarded-For`, and honouring two headers would let
/// a client pick whichever one its proxy does not overwrite.
fn client_ip(parts: &Parts, trusted_proxy_hops: usize) -> Option<IpAddr> {
    let peer = parts.extensions.get::<PeerAddr>().map(|peer| peer.0.ip());
    if trusted_proxy_hops == 0 {
        return peer;
    }
    // Several X-Forwarded-For headers form one list, in order.
    let mut entries: Vec<&str> = Vec::new();
    for value in parts.headers.get_all(X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        entries.extend(text.split(',').map(str::trim));
    }
    let forwarded = entries
        .len()
        .checked_sub(trusted_proxy_hops)
        .and_then(|index| entries.get(index))
        .and_then(|entry| parse_forwarded_ip(entry));
    forwarded.or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// IPv4 (or IPv4-mapped IPv6) as is; other IPv6 as its /64 prefix.
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use http::Request;

    fn parts(builder: http::request::Builder) -> Parts {
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn route_classes() {
        let cases = [
            ("/apps/1/events", "/apps/*/events"),
            ("/apps/1/batch_events", "/apps/*/batch_events"),
            ("/apps/1/channels", "/apps/*/channels"),
            ("/apps/1/channels/presence-x", "/apps/*/channels/*"),
            (
                "/apps/1/channels/presence-x/users",
                "/apps/*/channels/*/users",
            ),
            (
                "/apps/1/users/u-9/terminate_connections",
                "/apps/*/users/*/terminate_connections",
            ),
            ("/", "/"),
            ("", "/"),
            ("/apps//events", "/apps//events"),
            ("/health", "/health"),
        ];
        for (path, class) in cases {
            assert_eq!(route_class(path), class, "{path}");
        }
    }

    #[test]
    fn app_and_route_key() {
        let mut p = parts(Request::get("/apps/9/channels/private-a?auth_key=x"));
        assert_eq!(KeyBy::AppAndRoute.key(&p), None, "no app, no key");
        p.extensions
            .insert(AuthenticatedApp(Arc::new(App::new("9", "k", "s"))));
        assert_eq!(
            KeyBy::AppAndRoute.key(&p).as_deref(),
            Some("app:9:GET /apps/*/channels/*")
        );
    }

    #[test]
    fn client_ip_and_forwarded_for() {
        let peer = PeerAddr("10.0.0.1:4000".parse().unwrap());
        let with = |hops: usize, xff: &[&str]| {
            let mut builder = Request::get("/app/key");
            for value in xff {
                builder = builder.header("x-forwarded-for", *value);
            }
            let mut p = parts(builder);
            p.extensions.insert(peer);
            KeyBy::ClientIp {
                trusted_proxy_hops: hops,
            }
            .key(&p)
        };
        let ip = |s: &str| Some(format!("ip:{s}"));
        assert_eq!(with(0, &[]), ip("10.0.0.1"));
        assert_eq!(with(0, &["6.6.6.6"]), ip("10.0.0.1"), "hops 0 ignores XFF");
        assert_eq!(with(1, &["6.6.6.6, 1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(with(2, &["6.6.6.6, 1.2.3.4, 10.0.0.2"]), ip("1.2.3.4"));
        assert_eq!(with(2, &["6.6.6.6, 1.2.3.4", "10.0.0.2"]), ip("1.2.3.4"));
        assert_eq!(
            with(3, &["1.2.3.4, 10.0.0.2"]),
            ip("10.0.0.1"),
            "too few entries"
        );
        assert_eq!(with(1, &["nonsense"]), ip("10.0.0.1"));
        assert_eq!(with(1, &["1.2.3.4:999"]), ip("1.2.3.4"));
        assert_eq!(
            with(1, &["[2001:db8:1:2:3::4]:80"]),
            ip("2001:db8:1:2::/64")
        );
        assert_eq!(with(1, &["::ffff:1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(with(1, &[]), ip("10.0.0.1"));

        let bare = parts(Request::get("/"));
        assert_eq!(
            KeyBy::ClientIp {
                trusted_proxy_hops: 0
            }
            .key(&bare),
            None
        );
    }

    #[test]
    fn custom_key_and_debug() {
        let key = KeyBy::Custom(Arc::new(|p: &Parts| {
            p.headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }));
        assert_eq!(
            key.key(&parts(Request::get("/").header("x-tenant", "t1")))
                .as_deref(),
            Some("t1")
        );
        assert_eq!(key.key(&parts(Request::get("/"))), None);
        assert_eq!(format!("{key:?}"), "Custom(..)");
        assert_eq!(
            format!(
                "{:?}",
                KeyBy::ClientIp {
                    trusted_proxy_hops: 1
                }
            ),
            "ClientIp { trusted_proxy_hops: 1 }"
        );
    }
}
