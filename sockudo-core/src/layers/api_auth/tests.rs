//! Tests for the API auth layer: every check's status and body, body limits, readiness
//! passthrough, and mounting in `http_body_util::Full` stacks and an axum router.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::app::{App, AppManager, AppManagerError, StaticAppManager};
use crate::auth::{sign_api_request, ApiQuery};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const APP_ID: &str = "42";
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";
const DISABLED_ID: &str = "43";
const DISABLED_KEY: &str = "disabled-key";
const NOW: u64 = 1_700_000_000;
const EVENT: &[u8] = br#"{"name":"greet","channel":"news","data":"{\"hi\":1}"}"#;

fn apps() -> Arc<StaticAppManager> {
    let mut disabled = App::new(DISABLED_ID, DISABLED_KEY, "other-secret");
    disabled.enabled = false;
    Arc::new(StaticAppManager::new([
        App::new(APP_ID, KEY, SECRET),
        disabled,
    ]))
}

fn layer() -> ApiAuthLayer<StaticAppManager> {
    ApiAuthLayer::new(apps()).clock(|| NOW)
}

/// An app manager whose backend is down.
#[derive(Debug)]
struct DownAppManager;

#[async_trait]
impl AppManager for DownAppManager {
    async fn find_by_id(&self, _: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        Err(AppManagerError::Unavailable(
            "connection refused".to_owned(),
        ))
    }
    async fn find_by_key(&self, _: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        Err(AppManagerError::Unavailable(
            "connection refused".to_owned(),
        ))
    }
    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        Err(AppManagerError::Unavailable(
            "connection refused".to_owned(),
        ))
    }
}

/// The inner service: counts calls and reports what it saw (extensions and the body it
/// read itself) as JSON.
fn echo<B>(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    service_fn(move |req: Request<B>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let app = req
                .extensions()
                .get::<AuthenticatedApp>()
                .map(|app| app.0.id.clone());
            let extension_body = req
                .extensions()
                .get::<RequestBody>()
                .map(|body| body.0.clone());
            let info = req
                .extensions()
                .get::<ApiQuery>()
                .and_then(|query| query.get("info").map(str::to_owned));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let report = json!({
                "app": app,
                "body": String::from_utf8_lossy(&body),
                "extension_body_matches": extension_body.as_ref() == Some(&body),
                "info": info,
            });
            Ok(Response::new(Full::new(Bytes::from(report.to_string()))))
        }
    })
}

fn signed(method: &str, path: &str, extra: &[(&str, &str)], body: &[u8], timestamp: u64) -> String {
    format!(
        "{path}?{}",
        sign_api_request(KEY, SECRET, method, path, extra, body, timestamp)
    )
}

fn request(method: Method, uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn json_body<B>(response: Response<B>) -> (StatusCode, Value)
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    if status != StatusCode::OK {
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Send one `Full<Bytes>` request through `layer` around [`echo`]; returns status, JSON body
/// and how many times the inner service ran.
async fn send_with<M: AppManager + ?Sized>(
    layer: ApiAuthLayer<M>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Value, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(echo(Arc::clone(&calls)));
    let response = service.oneshot(req).await.unwrap();
    let (status, body) = json_body(response).await;
    (status, body, calls.load(Ordering::SeqCst))
}

async fn send(req: Request<Full<Bytes>>) -> (StatusCode, Value, usize) {
    send_with(layer(), req).await
}

fn error(status: u16, message: &str) -> Value {
    json!({ "error": message, "status": status })
}

#[tokio::test]
async fn valid_post_reaches_inner_with_extensions() {
    let uri = signed(
        "POST",
        "/apps/42/events",
        &[("info", "user_count")],
        EVENT,
        NOW - 30,
    );
    let (status, body, calls) = send(request(Method::POST, &uri, EVENT)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(calls, 1);
    assert_eq!(body["app"], APP_ID);
    assert_eq!(body["body"], std::str::from_utf8(EVENT).unwrap());
    assert_eq!(body["extension_body_matches"], true);
    assert_eq!(body["info"], "user_count");
}

#[tokio::test]
async fn valid_get_including_python_style_empty_body_md5() {
    let empty_md5 = crate::auth::body_md5_hex(b"");
    for extra in [vec![], vec![("body_md5", empty_md5.as_str())]] {
        let uri = signed("GET", "/apps/42/channels", &extra, b"", NOW);
        let (status, body, calls) = send(request(Method::GET, &uri, b"")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(calls, 1);
        assert_eq!(body["app"], APP_ID);
        assert_eq!(body["body"], "");
    }
}

#[tokio::test]
async fn path_without_app_segment_is_not_checked() {
    let uri = signed("GET", "/usage", &[], b"", NOW);
    let (status, body, _) = send(request(Method::GET, &uri, b"")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn each_failure_has_its_status_and_json_body_and_skips_inner() {
    let valid = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let disabled = format!(
        "/apps/43/events?{}",
        sign_api_request(
            DISABLED_KEY,
            "other-secret",
            "POST",
            "/apps/43/events",
            &[],
            EVENT,
            NOW
        )
    );
    let cases: Vec<(&str, String, &'static [u8], Value)> = vec![
        (
            "no query",
            "/apps/42/events".to_owned(),
            EVENT,
            error(400, "missing required query parameter `auth_key`"),
        ),
        (
            "no signature",
            valid.split("&auth_signature").next().unwrap().to_owned(),
            EVENT,
            error(400, "missing required query parameter `auth_signature`"),
        ),
        (
            "bad escape",
            format!("{valid}&x=%zz"),
            EVENT,
            error(
                400,
                "malformed query string: invalid percent-escape at byte 0",
            ),
        ),
        (
            "bad version",
            valid.replace("auth_version=1.0", "auth_version=2.0"),
            EVENT,
            error(400, "unsupported auth_version (expected 1.0)"),
        ),
        (
            "unknown key",
            valid.replace(KEY, "nobody"),
            EVENT,
            error(401, "unknown auth_key"),
        ),
        (
            "path id of another app",
            signed("POST", "/apps/43/events", &[], EVENT, NOW),
            EVENT,
            error(401, "app id does not match auth_key"),
        ),
        (
            "disabled app",
            disabled,
            EVENT,
            error(403, "app is disabled"),
        ),
        (
            "tampered param",
            format!("{valid}&info=user_count"),
            EVENT,
            error(401, "invalid auth_signature"),
        ),
        (
            "tampered body",
            valid.clone(),
            br#"{"name":"evil"}"#,
            error(401, "body_md5 does not match the request body"),
        ),
        (
            "body without body_md5",
            signed("POST", "/apps/42/events", &[], b"", NOW),
            EVENT,
            error(401, "body_md5 is required when the request has a body"),
        ),
        (
            "expired",
            signed("POST", "/apps/42/events", &[], EVENT, NOW - 601),
            EVENT,
            error(
                401,
                "auth_timestamp is 601s away from the server clock; check the client's clock",
            ),
        ),
        (
            "from the future",
            signed("POST", "/apps/42/events", &[], EVENT, NOW + 601),
            EVENT,
            error(
                401,
                "auth_timestamp is 601s away from the server clock; check the client's clock",
            ),
        ),
    ];
    for (name, uri, body, expected) in cases {
        let (status, json, calls) = send(request(Method::POST, &uri, body)).await;
        assert_eq!(status.as_u16(), expected["status"], "{name}");
        assert_eq!(json, expected, "{name}");
        assert_eq!(calls, 0, "{name}: inner service must not run");
    }

    // The same signed request with a different method or path fails the signature.
    let (status, _, calls) = send(request(Method::PUT, &valid, EVENT)).await;
    assert_eq!((status, calls), (StatusCode::UNAUTHORIZED, 0));
}

#[tokio::test]
async fn app_manager_failure_is_503() {
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let layer = ApiAuthLayer::new(Arc::new(DownAppManager)).clock(|| NOW);
    let (status, body, calls) = send_with(layer, request(Method::POST, &uri, EVENT)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, error(503, "app manager unavailable"));
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn works_with_a_dyn_app_manager() {
    let apps: Arc<dyn AppManager> = apps();
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let (status, body, calls) = send_with(
        ApiAuthLayer::new(apps).clock(|| NOW),
        request(Method::POST, &uri, EVENT),
    )
    .await;
    assert_eq!((status, calls), (StatusCode::OK, 1), "{body}");
}

#[tokio::test]
async fn timestamp_window_is_configurable() {
    let layer = || layer().timestamp_window(Duration::from_secs(10));
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW - 10);
    let (status, _, _) = send_with(layer(), request(Method::POST, &uri, EVENT)).await;
    assert_eq!(status, StatusCode::OK);
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW - 11);
    let (status, body, calls) = send_with(layer(), request(Method::POST, &uri, EVENT)).await;
    assert_eq!((status, calls), (StatusCode::UNAUTHORIZED, 0));
    assert_eq!(
        body["error"],
        "auth_timestamp is 11s away from the server clock; check the client's clock"
    );
}

#[tokio::test]
async fn builder_defaults() {
    let layer = ApiAuthLayer::new(apps());
    assert_eq!(layer.get_max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
    assert_eq!(layer.get_max_body_bytes(), 1024 * 1024);
    assert_eq!(layer.get_timestamp_window(), Duration::from_secs(600));
    assert!(format!("{layer:?}").contains("max_body_bytes"));
    // The default clock is the system clock: a request signed now passes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let uri = signed("POST", "/apps/42/events", &[], EVENT, now);
    let (status, body, _) = send_with(layer, request(Method::POST, &uri, EVENT)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A body yielding the given chunks (or errors) one frame per poll, with no size hint,
/// counting how often it was polled.
#[derive(Debug)]
struct ChunkedBody {
    chunks: VecDeque<Result<Bytes, &'static str>>,
    polls: Arc<AtomicUsize>,
}

impl ChunkedBody {
    fn new(
        chunks: impl IntoIterator<Item = Result<Bytes, &'static str>>,
    ) -> (Self, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        (
            Self {
                chunks: chunks.into_iter().collect(),
                polls: Arc::clone(&polls),
            },
            polls,
        )
    }
}

impl From<Bytes> for ChunkedBody {
    fn from(bytes: Bytes) -> Self {
        Self::new([Ok(bytes)]).0
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(
            self.chunks
                .pop_front()
                .map(|chunk| chunk.map(Frame::data).map_err(Into::into)),
        )
    }
}

async fn send_chunked(
    layer: ApiAuthLayer<StaticAppManager>,
    uri: &str,
    content_length: Option<usize>,
    body: ChunkedBody,
) -> (StatusCode, Value, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(echo::<ChunkedBody>(Arc::clone(&calls)));
    let mut builder = Request::builder().method(Method::POST).uri(uri);
    if let Some(len) = content_length {
        builder = builder.header(CONTENT_LENGTH, len);
    }
    let response = service.oneshot(builder.body(body).unwrap()).await.unwrap();
    let (status, json) = json_body(response).await;
    (status, json, calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn content_length_over_limit_is_413_without_reading() {
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let (body, polls) = ChunkedBody::new([Ok(Bytes::from_static(EVENT))]);
    let (status, json, calls) =
        send_chunked(layer().max_body_bytes(16), &uri, Some(EVENT.len()), body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json, error(413, "request body exceeds 16 bytes"));
    assert_eq!(polls.load(Ordering::SeqCst), 0, "body must not be read");
    assert_eq!(calls, 0);

    // A body with an exact size hint (Full) is caught the same way, even without the header.
    let (status, json, calls) = send_with(
        layer().max_body_bytes(16),
        request(Method::POST, &uri, EVENT),
    )
    .await;
    assert_eq!((status, calls), (StatusCode::PAYLOAD_TOO_LARGE, 0));
    assert_eq!(json, error(413, "request body exceeds 16 bytes"));
}

#[tokio::test]
async fn streamed_body_over_limit_stops_reading_at_the_limit() {
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let chunk = || Ok(Bytes::from_static(b"0123456789"));
    let (body, polls) = ChunkedBody::new([chunk(), chunk(), chunk(), chunk(), chunk()]);
    let (status, json, calls) = send_chunked(layer().max_body_bytes(25), &uri, None, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json, error(413, "request body exceeds 25 bytes"));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        3,
        "reading stops at the chunk that crosses the limit"
    );
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn streamed_body_is_reassembled_exactly_at_the_limit() {
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let (head, tail) = EVENT.split_at(10);
    let (body, _) = ChunkedBody::new([
        Ok(Bytes::from_static(head)),
        Ok(Bytes::new()),
        Ok(Bytes::from_static(tail)),
    ]);
    let (status, json, calls) =
        send_chunked(layer().max_body_bytes(EVENT.len()), &uri, None, body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(calls, 1);
    assert_eq!(json["body"], std::str::from_utf8(EVENT).unwrap());
    assert_eq!(json["extension_body_matches"], true);
}

#[tokio::test]
async fn unreadable_body_is_400() {
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let (body, _) = ChunkedBody::new([Ok(Bytes::from_static(b"{")), Err("connection reset")]);
    let (status, json, calls) = send_chunked(layer(), &uri, None, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json, error(400, "failed to read request body"));
    assert_eq!(calls, 0);
}

type MockRequest = Request<Full<Bytes>>;
type MockResponse = Response<Full<Bytes>>;

#[tokio::test]
async fn readiness_passes_through_and_the_readied_service_is_called() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(layer());

    handle.allow(0);
    assert!(
        service.poll_ready().is_pending(),
        "inner not ready => layer not ready"
    );
    handle.allow(1);
    assert!(service.is_woken());
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));

    // `Mock` panics when a clone that was not polled ready is called, so this also checks
    // that the future calls the instance that was readied.
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let response = tokio::spawn(service.call(request(Method::POST, &uri, EVENT)));
    let (req, reply) = handle.next_request().await.unwrap();
    assert_eq!(
        req.extensions().get::<AuthenticatedApp>().unwrap().0.id,
        APP_ID
    );
    assert_eq!(req.extensions().get::<RequestBody>().unwrap().0, EVENT);
    reply.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // `allow(1)` was used up by that call: pending again.
    assert!(service.poll_ready().is_pending());
}

#[tokio::test]
async fn rejection_never_reaches_the_readied_inner_service() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(layer());
    handle.allow(2);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let response = service
        .call(request(Method::POST, "/apps/42/events?auth_key=x", EVENT))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        handle.next_request().now_or_never().is_none(),
        "no request may reach the inner service"
    );
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(layer());
    handle.allow(1);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let response = tokio::spawn(service.call(request(Method::POST, &uri, EVENT)));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("inner exploded");
    let error = response.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "inner exploded");

    // And a readiness error of the inner service is the layer's readiness error.
    handle.send_error("inner closed");
    match service.poll_ready() {
        Poll::Ready(Err(error)) => assert_eq!(error.to_string(), "inner closed"),
        other => panic!("expected a readiness error, got {other:?}"),
    }
}

#[tokio::test]
async fn works_in_an_axum_router() {
    use axum::extract::Path;
    use axum::routing::{get, post};
    use axum::{Extension, Router};

    async fn events(
        Path(id): Path<String>,
        Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
        Extension(RequestBody(raw)): Extension<RequestBody>,
        body: Bytes,
    ) -> String {
        assert_eq!(raw, body);
        format!("{id}:{}:{}", app.key, body.len())
    }

    let router = Router::new()
        .route("/apps/{id}/events", post(events))
        .route("/apps/{id}/channels", get(|| async { "channels" }))
        .layer(layer());

    let uri = signed("POST", "/apps/42/events", &[], EVENT, NOW);
    let req = Request::post(&uri)
        .body(axum::body::Body::from(EVENT))
        .unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, format!("42:{KEY}:{}", EVENT.len()));

    let uri = signed("GET", "/apps/42/channels", &[], b"", NOW);
    let response = router
        .clone()
        .oneshot(Request::get(&uri).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let uri = signed("POST", "/apps/43/events", &[], EVENT, NOW);
    let req = Request::post(&uri)
        .body(axum::body::Body::from(EVENT))
        .unwrap();
    let (status, json) = json_body(router.oneshot(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json, error(401, "app id does not match auth_key"));
}

#[test]
fn layer_and_service_are_clone_send_sync_debug() {
    fn assert_traits<T: Clone + Send + Sync + std::fmt::Debug + 'static>(_: &T) {}
    let layer = layer();
    assert_traits(&layer);
    let service = ApiAuth::new(
        tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }),
        apps(),
    );
    assert_traits(&service);
    assert!(format!("{:?}", layer.layer(())).contains("ApiAuth"));
}

#[tokio::test]
async fn prefixed_signature_accepted_only_with_prefix_configured() {
    // The client signs the full path; a nesting router hands the layer the stripped one.
    let query = sign_api_request(
        KEY,
        SECRET,
        "GET",
        "/realtime/apps/42/channels",
        &[],
        b"",
        NOW,
    );
    let uri = format!("/apps/42/channels?{query}");
    let (status, _, calls) = send(request(Method::GET, &uri, b"")).await;
    assert_eq!((status, calls), (StatusCode::UNAUTHORIZED, 0));
    let (status, _, calls) = send_with(
        layer().path_prefix("/realtime"),
        request(Method::GET, &uri, b""),
    )
    .await;
    assert_eq!((status, calls), (StatusCode::OK, 1));
    // The unprefixed signature keeps working with a prefix configured.
    let uri = signed("GET", "/apps/42/channels", &[], b"", NOW);
    let (status, _, _) = send_with(
        layer().path_prefix("/realtime"),
        request(Method::GET, &uri, b""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
