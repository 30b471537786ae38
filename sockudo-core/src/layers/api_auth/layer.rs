//! [`ApiAuthLayer`]: the [`Layer`] that wraps services in [`ApiAuth`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower_layer::Layer;

use super::ApiAuth;
use crate::app::AppManager;
use crate::auth::DEFAULT_TIMESTAMP_WINDOW_SECS;

/// Default [`ApiAuthLayer::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The knobs shared by the layer and every service it builds; `Copy` so each request takes
/// its own without touching an `Arc`.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) timestamp_window: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) clock: fn() -> u64,
    pub(crate) path_prefix: Option<&'static str>,
}

impl Settings {
    pub(crate) const DEFAULT: Self = Self {
        timestamp_window: Duration::from_secs(DEFAULT_TIMESTAMP_WINDOW_SECS),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        clock: system_clock,
        path_prefix: None,
    };
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("timestamp_window", &self.timestamp_window)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("path_prefix", &self.path_prefix)
            .finish_non_exhaustive()
    }
}

/// Seconds since the unix epoch; 0 if the system clock is before 1970 (which then fails every
/// request as expired rather than panicking).
fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A [`Layer`] that authenticates Pusher HTTP API requests before they reach the wrapped
/// service; see the [module docs](super) for what it checks and in which order.
///
/// `M` may be a concrete manager or `dyn AppManager` (an `Arc<dyn AppManager>` works as is).
/// Built with [`new`](Self::new) and tuned with the `const` builder methods:
///
/// ```rust
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sockudo_core::app::{App, StaticAppManager};
/// use sockudo_core::layers::ApiAuthLayer;
///
/// let apps = Arc::new(StaticAppManager::new([App::new("1", "key", "secret")]));
/// let layer = ApiAuthLayer::new(apps)
///     .timestamp_window(Duration::from_secs(300))
///     .max_body_bytes(256 * 1024);
/// assert_eq!(layer.get_max_body_bytes(), 256 * 1024);
/// ```
pub struct ApiAuthLayer<M: ?Sized> {
    apps: Arc<M>,
    settings: Settings,
}

impl<M: AppManager + ?Sized> ApiAuthLayer<M> {
    /// A layer that looks apps up in `apps`, with the protocol's ±600 s timestamp window
    /// ([`DEFAULT_TIMESTAMP_WINDOW_SECS`]), a 1 MiB body limit ([`DEFAULT_MAX_BODY_BYTES`]),
    /// and the system clock.
    pub const fn new(apps: Arc<M>) -> Self {
        Self {
            apps,
            settings: Settings::DEFAULT,
        }
    }

    /// How far `auth_timestamp` may be from the server clock, either way (whole seconds;
    /// any sub-second part is ignored).
    #[must_use]
    pub const fn timestamp_window(mut self, window: Duration) -> Self {
        self.settings.timestamp_window = window;
        self
    }

    /// The largest request body accepted, in bytes. A larger `Content-Length` (or body size
    /// hint) is answered 413 without reading the body; a body without one is read only up to
    /// the limit, then answered 413.
    #[must_use]
    pub const fn max_body_bytes(mut self, limit: usize) -> Self {
        self.settings.max_body_bytes = limit;
        self
    }

    /// Replace the clock (unix seconds) the timestamp window is judged against; meant for
    /// tests. Any non-capturing closure coerces, e.g. `.clock(|| 1_353_088_179)`.
    #[must_use]
    pub const fn clock(mut self, clock: fn() -> u64) -> Self {
        self.settings.clock = clock;
        self
    }

    /// The prefix under which the API is mounted (e.g. `"/realtime"` when the router is
    /// `nest`ed there). Routers that strip a prefix hand the layer the shortened path, while a
    /// client configured with the prefix signs the full one: with a prefix set, a signature
    /// over either path is accepted.
    #[must_use]
    pub const fn path_prefix(mut self, prefix: &'static str) -> Self {
        self.settings.path_prefix = Some(prefix);
        self
    }

    /// The configured timestamp window.
    pub const fn get_timestamp_window(&self) -> Duration {
        self.settings.timestamp_window
    }

    /// The configured body limit, in bytes.
    pub const fn get_max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    /// The app manager requests are authenticated against.
    pub const fn apps(&self) -> &Arc<M> {
        &self.apps
    }
}

impl<M: ?Sized> Clone for ApiAuthLayer<M> {
    fn clone(&self) -> Self {
        Self {
            apps: Arc::clone(&self.apps),
            settings: self.settings,
        }
    }
}

impl<M: ?Sized> fmt::Debug for ApiAuthLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiAuthLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S, M: AppManager + ?Sized> Layer<S> for ApiAuthLayer<M> {
    type Service = ApiAuth<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiAuth::with_settings(inner, Arc::clone(&self.apps), self.settings)
    }
}
