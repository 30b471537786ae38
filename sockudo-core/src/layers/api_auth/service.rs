//! [`ApiAuth`]: the [`Service`] that authenticates each request before calling the inner one.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::layer::Settings;
use super::{ApiAuthLayer, ApiAuthRejection, AuthenticatedApp, RequestBody, ResponseFuture};
use crate::app::AppManager;
use crate::auth::{ApiAuthError, ApiQuery};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Middleware that authenticates Pusher HTTP API requests; see the [module docs](super).
///
/// Usually built by [`ApiAuthLayer`]; [`ApiAuth::new`] wraps a service directly with the
/// default settings.
pub struct ApiAuth<S, M: ?Sized> {
    inner: S,
    apps: Arc<M>,
    settings: Settings,
}

impl<S, M: AppManager + ?Sized> ApiAuth<S, M> {
    /// Wrap `inner`, authenticating against `apps` with the default settings (those of
    /// [`ApiAuthLayer::new`]).
    pub const fn new(inner: S, apps: Arc<M>) -> Self {
        Self::with_settings(inner, apps, Settings::DEFAULT)
    }

    pub(crate) const fn with_settings(inner: S, apps: Arc<M>, settings: Settings) -> Self {
        Self {
            inner,
            apps,
            settings,
        }
    }

    /// An [`ApiAuthLayer`] (same as [`ApiAuthLayer::new`]), tower-style.
    pub const fn layer(apps: Arc<M>) -> ApiAuthLayer<M> {
        ApiAuthLayer::new(apps)
    }

    /// The wrapped service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M: ?Sized> Clone for ApiAuth<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            apps: Arc::clone(&self.apps),
            settings: self.settings,
        }
    }
}

impl<S: fmt::Debug, M: ?Sized> fmt::Debug for ApiAuth<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiAuth")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S, M, B, RB> Service<Request<B>> for ApiAuth<S, M>
where
    M: AppManager + ?Sized,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<RB>, S::Error>;

    /// Ready exactly when the inner service is: backpressure passes straight through.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was just polled ready is the one the future calls; `self` keeps a
        // fresh clone, which must be polled ready again before its own next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let apps = Arc::clone(&self.apps);
        let settings = self.settings;
        ResponseFuture::new(Box::pin(async move {
            match authenticate(req, apps.as_ref(), settings).await {
                Ok(req) => inner.call(req).await,
                Err(rejection) => {
                    tracing::debug!(status = rejection.status().as_u16(), reason = %rejection, "API request rejected");
                    Ok(rejection.into_response())
                }
            }
        }))
    }
}

/// Every check, in the documented order; on success the request is rebuilt around the
/// collected body, with the extensions inserted.
async fn authenticate<B, M>(
    req: Request<B>,
    apps: &M,
    settings: Settings,
) -> Result<Request<B>, ApiAuthRejection>
where
    M: AppManager + ?Sized,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    let limit = settings.max_body_bytes;
    if declared_body_len(&req) > limit as u64 {
        return Err(ApiAuthRejection::BodyTooLarge { limit });
    }

    let query = ApiQuery::parse(req.uri().query().unwrap_or_default())?;
    let app = match apps.find_by_key(query.auth_key()).await {
        Ok(Some(app)) => app,
        Ok(None) => return Err(ApiAuthRejection::UnknownKey),
        Err(error) => {
            tracing::warn!(%error, "app manager failed while authenticating an API request");
            return Err(ApiAuthRejection::AppManagerUnavailable);
        }
    };
    if path_app_id(req.uri().path()).is_some_and(|id| id != app.id) {
        return Err(ApiAuthRejection::AppIdMismatch);
    }
    if !app.enabled {
        return Err(ApiAuthRejection::AppDisabled);
    }

    let (mut parts, body) = req.into_parts();
    let body = collect_limited(body, limit).await?;
    let verify = |path: &str| {
        query.verify(
            &app.secret,
            parts.method.as_str(),
            path,
            &body,
            (settings.clock)(),
            settings.timestamp_window.as_secs(),
        )
    };
    match (verify(parts.uri.path()), settings.path_prefix) {
        (Ok(()), _) => {}
        (Err(ApiAuthError::InvalidSignature), Some(prefix)) => verify(&format!(
            "{}{}",
            prefix.trim_end_matches('/'),
            parts.uri.path()
        ))?,
        (Err(e), _) => return Err(e.into()),
    }

    parts.extensions.insert(AuthenticatedApp(app));
    parts.extensions.insert(RequestBody(body.clone()));
    parts.extensions.insert(query);
    Ok(Request::from_parts(parts, B::from(body)))
}

/// The larger of `Content-Length` and the body's own lower size bound. An unparsable `Content-Length` is ignored here (hyper rejects those earlier);
/// the limit still holds while collecting.
fn declared_body_len<B: Body>(req: &Request<B>) -> u64 {
    let header = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let hint = req.body().size_hint().lower();
    header.map_or(hint, |len| len.max(hint))
}

/// The segment after the first `apps` segment, if any: `/apps/42/events` → `42`. Compared
/// as received (not percent-decoded), as app ids are plain tokens.
fn path_app_id(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    segments.find(|segment| *segment == "apps")?;
    segments.next()
}

/// Read the whole body, failing as soon as it grows past `limit` (the rest is never polled).
/// Trailers are ignored. A single-chunk body is kept without copying.
async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, ApiAuthRejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::debug!(%error, "failed to read API request body");
            ApiAuthRejection::BodyRead
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > limit {
            return Err(ApiAuthRejection::BodyTooLarge { limit });
        }
        if len > 0 {
            chunks.push(data.copy_to_bytes(len));
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    })
}

#[cfg(test)]
mod unit_tests {
    use super::path_app_id;

    #[test]
    fn app_id_from_path() {
        assert_eq!(path_app_id("/apps/42/events"), Some("42"));
        assert_eq!(path_app_id("/apps/42"), Some("42"));
        assert_eq!(path_app_id("/prefix/apps/7/channels/apps"), Some("7"));
        assert_eq!(path_app_id("/apps/"), Some(""));
        assert_eq!(path_app_id("/apps"), None);
        assert_eq!(path_app_id("/applications/1"), None);
        assert_eq!(path_app_id("/health"), None);
    }
}
