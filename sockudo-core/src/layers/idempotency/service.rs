//! [`Idempotency`]: the [`Service`] that claims a request's key before calling the inner one.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_service::Service;

use super::fingerprint::{body_key, BodyKey};
use super::layer::Shared;
use super::record::{Record, Stored};
use super::{
    validate_key, Fingerprint, IdempotencyLayer, IdempotencyRejection, ResponseFuture,
    X_IDEMPOTENCY_KEY, X_IDEMPOTENT_REPLAYED,
};
use crate::layers::api_auth::{AuthenticatedApp, RequestBody};
use crate::layers::json_error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Middleware that runs each keyed request once per key; see the [module docs](super).
/// Built by [`IdempotencyLayer`].
pub struct Idempotency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Idempotency<S> {
    pub(crate) const fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Wrap `inner` with the settings of `layer` (same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &IdempotencyLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
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

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Body + From<Bytes> + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<RB>, S::Error>;

    /// Ready exactly when the inner service is: backpressure passes straight through.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Call the instance that was polled ready; keep a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) {
            return ResponseFuture::new(Box::pin(inner.call(req)));
        }
        ResponseFuture::new(Box::pin(handle(req, inner, Arc::clone(&self.shared))))
    }
}

/// What [`prepare`] made of a request.
enum Prepared<B> {
    /// No key: call the inner service with this (unchanged) request.
    PassThrough(Request<B>),
    /// A valid key: claim `cache_key` for `fingerprint` first.
    Keyed {
        req: Request<B>,
        cache_key: String,
        fingerprint: String,
    },
}

/// What [`claim`] found.
enum Claim {
    /// This request holds the claim (the pending record it wrote): run it.
    Claimed(Bytes),
    /// An earlier request with this key and fingerprint completed: replay its response.
    Replay(Stored),
}

async fn handle<S, B, RB>(
    req: Request<B>,
    mut inner: S,
    shared: Arc<Shared>,
) -> Result<Response<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body + From<Bytes> + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    let (req, cache_key, fingerprint) = match prepare(req, &shared).await {
        Ok(Prepared::PassThrough(req)) => return inner.call(req).await,
        Ok(Prepared::Keyed {
            req,
            cache_key,
            fingerprint,
        }) => (req, cache_key, fingerprint),
        Err(rejection) => return Ok(reject(&rejection)),
    };
    let pending = match claim(&shared, &cache_key, &fingerprint).await {
        Ok(Claim::Claimed(pending)) => pending,
        Ok(Claim::Replay(stored)) => return Ok(replay(stored)),
        Err(rejection) => return Ok(reject(&rejection)),
    };

    // Once claimed, the inner call runs to completion even if the client goes away (hyper
    // drops the response future then): its outcome is recorded, so the client's retry gets a
    // replay instead of finding the key pending, or worse, a lost record.
    let run = async move {
        let result = inner.call(req).await;
        finish(result, &shared, &cache_key, &fingerprint, &pending).await
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn(run).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Ok(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request was cancelled while running",
            )),
        },
        Err(_) => run.await,
    }
}

fn reject<RB: From<Bytes>>(rejection: &IdempotencyRejection) -> Response<RB> {
    tracing::debug!(status = rejection.status().as_u16(), reason = %rejection, "idempotency layer answered");
    rejection.into_response()
}

/// Find the key (body first, then header), validate it, and fingerprint the request.
async fn prepare<B>(req: Request<B>, shared: &Shared) -> Result<Prepared<B>, IdempotencyRejection>
where
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let (bytes, body) = match parts.extensions.get::<RequestBody>() {
        // Already read (and put back) by `ApiAuth`: no second read.
        Some(RequestBody(bytes)) => (bytes.clone(), body),
        None => {
            let limit = shared.max_body_bytes;
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
                .max(body.size_hint().lower());
            if declared > limit as u64 {
                return Err(IdempotencyRejection::BodyTooLarge { limit });
            }
            let bytes = collect_limited(body, limit).await?;
            (bytes.clone(), B::from(bytes))
        }
    };

    let header_key = match parts.headers.get(X_IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| IdempotencyRejection::InvalidKey("the header is not visible ASCII"))?
                .to_owned(),
        ),
    };
    let key = match body_key(&bytes) {
        BodyKey::Present(key) => key,
        BodyKey::NotAString => return Err(IdempotencyRejection::InvalidKey("must be a string")),
        BodyKey::Absent => match header_key {
            Some(key) => key,
            None => return Ok(Prepared::PassThrough(Request::from_parts(parts, body))),
        },
    };
    validate_key(&key)?;

    // Without `ApiAuth` in front there is no app: keys then share one global scope.
    let app_id = parts
        .extensions
        .get::<AuthenticatedApp>()
        .map_or("", |app| app.0.id.as_str());
    // The length prefix keeps `app "a:b", key "c"` apart from `app "a", key "b:c"`.
    let cache_key = format!("{}{}:{app_id}:{key}", shared.key_prefix, app_id.len());
    let fingerprint = Fingerprint::of_request(&parts.method, &parts.uri, &bytes).to_hex();
    Ok(Prepared::Keyed {
        req: Request::from_parts(parts, body),
        cache_key,
        fingerprint,
    })
}

/// Claim the key, or find what holds it: replay a completed request with the same
/// fingerprint, wait (bounded) for a pending one, refuse a different one.
async fn claim(
    shared: &Shared,
    cache_key: &str,
    fingerprint: &str,
) -> Result<Claim, IdempotencyRejection> {
    let pending = Record::pending(fingerprint);
    let deadline = Instant::now() + shared.in_flight_wait;
    let mut vanished = 0u32;
    let unavailable = |error: crate::cache::CacheError| {
        tracing::warn!(%error, key = %cache_key, "idempotency cache failed; refusing the request");
        IdempotencyRejection::CacheUnavailable
    };
    loop {
        if shared
            .cache
            .set_if_absent(
                cache_key,
                pending.clone(),
                Some(shared.pending_lease.min(shared.ttl)),
            )
            .await
            .map_err(unavailable)?
        {
            return Ok(Claim::Claimed(pending));
        }
        let Some(raw) = shared.cache.get(cache_key).await.map_err(unavailable)? else {
            // Expired or released between the two calls: claim again, a few times at most.
            vanished += 1;
            if vanished > 3 {
                return Err(IdempotencyRejection::InFlight);
            }
            continue;
        };
        let Some(record) = Record::decode(&raw) else {
            tracing::error!(key = %cache_key, "unreadable idempotency record");
            return Err(IdempotencyRejection::RecordUnreadable);
        };
        if record.fingerprint() != fingerprint {
            return Err(IdempotencyRejection::Conflict);
        }
        if let Record::Done { .. } = record {
            return record.stored().map(Claim::Replay).ok_or_else(|| {
                tracing::error!(key = %cache_key, "unreadable stored idempotent response");
                IdempotencyRejection::RecordUnreadable
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(IdempotencyRejection::InFlight);
        }
        tokio::time::sleep(shared.poll_interval.min(deadline - now)).await;
    }
}

/// Whether a final response is stored for replay. 5xx are not (the failure may be
/// transient, so the key is released and a retry runs again), and neither are the 4xx that
/// say "not now" rather than "no": 408, 409, 425, 429.
fn is_cacheable(status: StatusCode) -> bool {
    !status.is_informational()
        && !status.is_server_error()
        && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

/// Record the inner service's outcome: store a cacheable response over our pending claim,
/// or release the claim.
async fn finish<RB, E>(
    result: Result<Response<RB>, E>,
    shared: &Shared,
    cache_key: &str,
    fingerprint: &str,
    pending: &Bytes,
) -> Result<Response<RB>, E>
where
    RB: Body + From<Bytes>,
    RB::Error: Into<BoxError>,
{
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            release(shared, cache_key).await;
            return Err(error);
        }
    };
    let (parts, body) = response.into_parts();
    // Bounded: the response is held in memory to be stored.
    let limited = http_body_util::Limited::new(body, shared.max_response_bytes);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            // The effect has happened but its response is lost: keep the claim (retries see
            // "in progress" until the TTL) rather than release it and risk a second effect.
            tracing::error!(%error, key = %cache_key, "failed to read the response of an idempotent request");
            return Ok(json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to read the response body",
            ));
        }
    };
    if is_cacheable(parts.status) {
        let done = Record::done(fingerprint, parts.status, &parts.headers, &bytes);
        // Swap from our own pending record, so a claim that expired and was taken over by a
        // later request is not overwritten.
        match shared
            .cache
            .compare_and_swap(cache_key, Some(pending), done, Some(shared.ttl))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %cache_key, "idempotency claim changed while the request ran (expired?); response not stored");
            }
            Err(error) => {
                tracing::error!(%error, key = %cache_key, "failed to store an idempotent response; retries get 503 until the key expires");
            }
        }
    } else {
        release(shared, cache_key).await;
    }
    Ok(Response::from_parts(parts, RB::from(bytes)))
}

async fn release(shared: &Shared, cache_key: &str) {
    if let Err(error) = shared.cache.delete(cache_key).await {
        tracing::warn!(%error, key = %cache_key, "failed to release an idempotency claim; it expires with its TTL");
    }
}

fn replay<RB: From<Bytes>>(stored: Stored) -> Response<RB> {
    let mut response = Response::new(RB::from(stored.body));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers;
    response
        .headers_mut()
        .insert(X_IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Read the whole body, failing as soon as it grows past `limit`.
async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, IdempotencyRejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::debug!(%error, "failed to read request body");
            IdempotencyRejection::BodyRead
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if joined.len().saturating_add(data.remaining()) > limit {
            return Err(IdempotencyRejection::BodyTooLarge { limit });
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            joined.extend_from_slice(chunk);
            let len = chunk.len();
            data.advance(len);
        }
    }
    Ok(joined.freeze())
}

#[cfg(test)]
mod unit_tests {
    use super::is_cacheable;
    use http::StatusCode;

    #[test]
    fn cacheable_statuses() {
        for ok in [200, 201, 202, 204, 301, 400, 401, 403, 404, 413, 422] {
            assert!(is_cacheable(StatusCode::from_u16(ok).unwrap()), "{ok}");
        }
        for not in [100, 408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(!is_cacheable(StatusCode::from_u16(not).unwrap()), "{not}");
        }
    }
}
