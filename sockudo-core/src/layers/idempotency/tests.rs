//! Service-level tests of [`Idempotency`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{service_fn, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

use super::*;
use crate::app::App;
use crate::cache::{Cache, MemoryCache};
use crate::layers::api_auth::{AuthenticatedApp, RequestBody};
use crate::layers::test_support::FailingCache;

const EVENT: &str = r#"{"name":"e","channel":"c","data":"hello"}"#;

/// Counts calls; answers 200 `{"call":n,"body":…}` (JSON), or the status in `x-status`,
/// after the delay in `x-delay-ms`.
#[derive(Clone)]
struct Inner {
    calls: Arc<AtomicUsize>,
}

impl Inner {
    fn new() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let calls = Arc::clone(&self.calls);
        service_fn(move |req: Request<Full<Bytes>>| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let Some(ms) = header("x-delay-ms") {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let status = header("x-status").map_or(200, |s| s as u16);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let text =
                    json!({"call": call, "body": String::from_utf8_lossy(&body)}).to_string();
                let mut response = Response::new(Full::new(Bytes::from(text)));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
                    .headers_mut()
                    .insert("x-not-stored", HeaderValue::from_static("1"));
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn layer(cache: Arc<dyn Cache>) -> IdempotencyLayer {
    IdempotencyLayer::new(cache)
}

fn publish(app: &str, body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("/apps/{app}/events?auth_key=k&auth_signature=s"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    req.extensions_mut()
        .insert(AuthenticatedApp(Arc::new(App::new(
            app,
            format!("key-{app}"),
            "s",
        ))));
    req
}

fn with_header(
    mut req: Request<Full<Bytes>>,
    name: &'static str,
    value: &str,
) -> Request<Full<Bytes>> {
    req.headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    req
}

fn keyed(body: &str, key: &str) -> String {
    let mut value: Value = serde_json::from_str(body).unwrap();
    value["idempotency_key"] = Value::String(key.to_owned());
    value.to_string()
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    content_type: Option<String>,
    retry_after: Option<String>,
    stored_only: bool,
    body: Value,
}

async fn answer(response: Response<Full<Bytes>>) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let replayed = header("x-idempotent-replayed").as_deref() == Some("true");
    let content_type = header("content-type");
    let retry_after = header("retry-after");
    let stored_only = header("x-not-stored").is_none();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        replayed,
        content_type,
        retry_after,
        stored_only,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

async fn send<S>(service: &S, req: Request<Full<Bytes>>) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
{
    answer(service.clone().oneshot(req).await.unwrap()).await
}

fn error(status: u16, message: &str) -> Value {
    json!({"error": message, "status": status})
}

#[tokio::test]
async fn requests_without_a_key_pass_untouched() {
    let cache = Arc::new(MemoryCache::new());
    let inner = Inner::new();
    let service = layer(cache.clone()).layer(inner.service());
    for _ in 0..2 {
        let a = send(&service, publish("1", EVENT)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(!a.replayed);
        assert_eq!(a.body["body"], EVENT, "the body reaches the handler intact");
    }
    assert_eq!(inner.calls(), 2);
    assert!(cache.is_empty(), "nothing is stored without a key");
    // A GET is never keyed, even with the header.
    let get = with_header(
        Request::get("/apps/1/channels")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "x-idempotency-key",
        "k",
    );
    assert_eq!(send(&service, get).await.status, StatusCode::OK);
    assert!(cache.is_empty());
}

#[tokio::test]
async fn header_key_replays_identical_status_and_body() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let req = || with_header(publish("1", EVENT), "x-idempotency-key", "abc");
    let first = send(&service, req()).await;
    assert_eq!(
        (first.status, first.replayed, first.stored_only),
        (StatusCode::OK, false, false)
    );
    let retry = send(&service, req()).await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    assert!(retry.replayed);
    assert!(retry.stored_only, "only content headers are replayed");
    assert_eq!(retry.content_type.as_deref(), Some("application/json"));
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn body_key_wins_and_fingerprint_ignores_the_key_position() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    // Body key "b" wins over header "h".
    let first = send(
        &service,
        with_header(publish("1", &keyed(EVENT, "b")), "x-idempotency-key", "h"),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    // "h" was not used.
    let other = send(
        &service,
        with_header(publish("1", EVENT), "x-idempotency-key", "h"),
    )
    .await;
    assert!(!other.replayed);
    // "b" via the header, with the same payload (no key in the body): the same request.
    let moved = send(
        &service,
        with_header(publish("1", EVENT), "x-idempotency-key", "b"),
    )
    .await;
    assert!(moved.replayed);
    assert_eq!(moved.body, first.body);
    // Reordered, reformatted body with the key: still the same request.
    let reordered = r#"{ "data" : "hello", "idempotency_key": "b", "channel": "c", "name": "e" }"#;
    let again = send(&service, publish("1", reordered)).await;
    assert!(again.replayed);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test]
async fn same_key_different_payload_is_409() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    send(&service, publish("1", &keyed(EVENT, "k"))).await;
    let changed = keyed(r#"{"name":"e","channel":"c","data":"bye"}"#, "k");
    let conflict = send(&service, publish("1", &changed)).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(
        conflict.body,
        error(
            409,
            "idempotency_key was already used for a different request"
        )
    );
    // Another path is another request too.
    let mut batch = publish("1", &keyed(EVENT, "k"));
    *batch.uri_mut() = "/apps/1/batch_events".parse().unwrap();
    assert_eq!(send(&service, batch).await.status, StatusCode::CONFLICT);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn keys_are_scoped_per_app() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let a = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    let b = send(&service, publish("2", &keyed(EVENT, "k"))).await;
    assert!(!a.replayed && !b.replayed);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test]
async fn invalid_keys_are_400_and_never_run() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let long = "x".repeat(129);
    let cases = [
        (
            publish("1", &keyed(EVENT, &long)),
            "idempotency_key is longer than 128 characters",
        ),
        (
            with_header(publish("1", EVENT), "x-idempotency-key", &long),
            "idempotency_key is longer than 128 characters",
        ),
        (
            publish("1", &keyed(EVENT, "")),
            "invalid idempotency_key: empty",
        ),
        (
            publish("1", r#"{"name":"e","idempotency_key":42}"#),
            "invalid idempotency_key: must be a string",
        ),
    ];
    for (req, message) in cases {
        let a = send(&service, req).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{message}");
        assert_eq!(a.body, error(400, message));
    }
    let mut bad_header = publish("1", EVENT);
    bad_header.headers_mut().insert(
        "x-idempotency-key",
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    assert_eq!(
        send(&service, bad_header).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(inner.calls(), 0);
    // Exactly 128 characters (multi-byte ones included) is fine.
    let ok = send(&service, publish("1", &keyed(EVENT, &"é".repeat(128)))).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn cache_unreachable_is_503_and_nothing_runs() {
    let inner = Inner::new();
    let service = layer(Arc::new(FailingCache)).layer(inner.service());
    let a = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(
        a.body,
        error(
            503,
            "idempotency store unavailable; the request was not processed"
        )
    );
    let b = send(
        &service,
        with_header(publish("1", EVENT), "x-idempotency-key", "k"),
    )
    .await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 0);
    // Without a key the cache is not needed.
    assert_eq!(
        send(&service, publish("1", EVENT)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn pending_key_is_503_after_the_wait() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new()))
        .pending_lease(Duration::from_secs(60))
        .layer(inner.service());
    let slow = with_header(publish("1", &keyed(EVENT, "k")), "x-delay-ms", "10000");
    let first = tokio::spawn({
        let service = service.clone();
        async move { answer(service.oneshot(slow).await.unwrap()).await }
    });
    tokio::task::yield_now().await;
    while inner.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = tokio::time::Instant::now();
    let retry = send(
        &service,
        with_header(publish("1", &keyed(EVENT, "k")), "x-delay-ms", "10000"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.retry_after.as_deref(), Some("1"));
    assert_eq!(
        retry.body,
        error(
            503,
            "a request with this idempotency_key is still in progress; retry later"
        )
    );
    assert_eq!(
        started.elapsed(),
        DEFAULT_IN_FLIGHT_WAIT,
        "waited exactly the configured time"
    );
    // Meanwhile a different payload is still a conflict, not "in progress".
    let conflict = send(&service, publish("1", &keyed(r#"{"x":1}"#, "k"))).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);

    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let after = send(
        &service,
        with_header(publish("1", &keyed(EVENT, "k")), "x-delay-ms", "10000"),
    )
    .await;
    assert!(after.replayed);
    assert_eq!(after.body, first.body);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_the_first_and_replays_it() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let req = || with_header(publish("1", &keyed(EVENT, "k")), "x-delay-ms", "500");
    let first = tokio::spawn({
        let service = service.clone();
        let req = req();
        async move { answer(service.oneshot(req).await.unwrap()).await }
    });
    while inner.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let retry = send(&service, req()).await;
    let first = first.await.unwrap();
    assert!(retry.replayed && !first.replayed);
    assert_eq!((retry.status, &retry.body), (first.status, &first.body));
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn twenty_concurrent_requests_run_the_inner_service_once() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let service = service.clone();
            let req = with_header(publish("1", &keyed(EVENT, "same")), "x-delay-ms", "100");
            tokio::spawn(async move { answer(service.oneshot(req).await.unwrap()).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert_eq!(inner.calls(), 1);
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "all answered 200"
    );
    assert!(
        answers.iter().all(|a| a.body == answers[0].body),
        "identical bodies"
    );
    assert_eq!(answers.iter().filter(|a| a.replayed).count(), 19);
}

#[tokio::test]
async fn server_errors_release_the_key_client_errors_are_stored() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let failing = || with_header(publish("1", &keyed(EVENT, "k5")), "x-status", "503");
    assert_eq!(
        send(&service, failing()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let again = send(&service, failing()).await;
    assert!(!again.replayed, "a 5xx is not replayed: the retry runs");
    assert_eq!(inner.calls(), 2);

    for status in ["429", "409"] {
        let req = || with_header(publish("1", &keyed(EVENT, status)), "x-status", status);
        send(&service, req()).await;
        assert!(
            !send(&service, req()).await.replayed,
            "{status} is not stored"
        );
    }
    assert_eq!(inner.calls(), 6);

    let rejected = || with_header(publish("1", &keyed(EVENT, "k4")), "x-status", "413");
    let first = send(&service, rejected()).await;
    let retry = send(&service, rejected()).await;
    assert_eq!(
        (retry.status, retry.replayed),
        (StatusCode::PAYLOAD_TOO_LARGE, true)
    );
    assert_eq!(retry.body, first.body);
    assert_eq!(inner.calls(), 7);
}

#[tokio::test(start_paused = true)]
async fn keys_expire_with_the_ttl() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new()))
        .ttl(Duration::from_secs(5))
        .layer(inner.service());
    let req = || publish("1", &keyed(EVENT, "k"));
    send(&service, req()).await;
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(send(&service, req()).await.replayed);
    tokio::time::advance(Duration::from_millis(2)).await;
    assert!(!send(&service, req()).await.replayed);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test]
async fn request_body_extension_is_used_when_present() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new())).layer(inner.service());
    let req = || {
        let mut req = publish("1", "");
        req.extensions_mut()
            .insert(RequestBody(Bytes::from(keyed(EVENT, "from-ext"))));
        req
    };
    send(&service, req()).await;
    assert!(send(&service, req()).await.replayed);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn oversized_body_is_413_when_read_by_the_layer() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new()))
        .max_body_bytes(16)
        .layer(inner.service());
    let a = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.body, error(413, "request body exceeds 16 bytes"));
    assert_eq!(inner.calls(), 0);
}

/// The keyed response is read into memory to be stored: bounded. One over the limit took
/// effect but cannot be kept, so the key stays claimed and a retry does not run it again.
#[tokio::test]
async fn a_response_over_the_limit_is_500_and_not_run_again() {
    let inner = Inner::new();
    let service = layer(Arc::new(MemoryCache::new()))
        .max_response_bytes(4)
        .in_flight_wait(std::time::Duration::from_millis(20))
        .layer(inner.service());
    let a = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let b = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn unreadable_record_is_503() {
    let cache = Arc::new(MemoryCache::new());
    cache
        .set("sockudo:idem:1:1:k", Bytes::from_static(b"???"), None)
        .await
        .unwrap();
    let inner = Inner::new();
    let service = layer(cache).layer(inner.service());
    let a = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 0);
}

type MockRequest = Request<Full<Bytes>>;
type MockResponse = Response<Full<Bytes>>;

#[tokio::test]
async fn readiness_passes_through_and_the_readied_service_is_called() {
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(
        layer(Arc::new(MemoryCache::new())),
    );
    handle.allow(0);
    assert!(
        service.poll_ready().is_pending(),
        "inner not ready => layer not ready"
    );
    handle.allow(1);
    assert!(service.is_woken());
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let response = tokio::spawn(service.call(publish("1", &keyed(EVENT, "k"))));
    let (req, reply) = handle.next_request().await.unwrap();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, keyed(EVENT, "k"), "the body is put back whole");
    reply.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    assert_eq!(response.await.unwrap().unwrap().status(), StatusCode::OK);
    assert!(service.poll_ready().is_pending(), "allow(1) was used up");
}

#[tokio::test]
async fn rejections_and_replays_never_reach_the_readied_inner_service() {
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(
        layer(Arc::new(MemoryCache::new())),
    );
    handle.allow(10);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let first = tokio::spawn(service.call(publish("1", &keyed(EVENT, "k"))));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    first.await.unwrap().unwrap();

    for (req, status) in [
        (publish("1", &keyed(EVENT, "k")), StatusCode::OK),
        (
            publish("1", &keyed(r#"{"other":1}"#, "k")),
            StatusCode::CONFLICT,
        ),
        (
            publish("1", &keyed(EVENT, &"x".repeat(200))),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
        let response = service.call(req).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers().contains_key("x-idempotent-replayed"),
            status == StatusCode::OK
        );
        assert!(handle.next_request().now_or_never().is_none());
    }
}

#[tokio::test]
async fn inner_errors_release_the_key_and_pass_through() {
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(
        layer(Arc::new(MemoryCache::new())),
    );
    handle.allow(2);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let response = tokio::spawn(service.call(publish("1", &keyed(EVENT, "k"))));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("inner exploded");
    assert_eq!(
        response.await.unwrap().unwrap_err().to_string(),
        "inner exploded"
    );
    // Released: the retry runs.
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let retry = tokio::spawn(service.call(publish("1", &keyed(EVENT, "k"))));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new(Full::new(Bytes::new())));
    assert_eq!(retry.await.unwrap().unwrap().status(), StatusCode::OK);

    handle.send_error("inner closed");
    match service.poll_ready() {
        Poll::Ready(Err(error)) => assert_eq!(error.to_string(), "inner closed"),
        other => panic!("expected a readiness error, got {other:?}"),
    }
}

#[tokio::test]
async fn works_in_an_axum_router() {
    use axum::routing::post;
    use axum::Router;

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let router = Router::new()
        .route(
            "/apps/{id}/events",
            post(move |body: Bytes| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move { format!("{n}:{}", body.len()) }
            }),
        )
        .route_layer(layer(Arc::new(MemoryCache::new())));
    let req = || {
        Request::post("/apps/1/events")
            .header("x-idempotency-key", "k")
            .body(axum::body::Body::from(EVENT))
            .unwrap()
    };
    let first = router.clone().oneshot(req()).await.unwrap();
    let first_body = first.into_body().collect().await.unwrap().to_bytes();
    let retry = router.oneshot(req()).await.unwrap();
    assert_eq!(retry.headers()["x-idempotent-replayed"], "true");
    assert_eq!(
        retry.into_body().collect().await.unwrap().to_bytes(),
        first_body
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn layer_and_service_are_clone_send_sync_debug() {
    fn assert_traits<T: Clone + Send + Sync + std::fmt::Debug + 'static>(_: &T) {}
    let layer = layer(Arc::new(MemoryCache::new()));
    assert_traits(&layer);
    assert_eq!(layer.get_ttl(), Duration::from_secs(120));
    assert_eq!(layer.get_in_flight_wait(), Duration::from_secs(2));
    let service = layer.layer(());
    assert_traits(&service);
    assert!(format!("{service:?}").contains("Idempotency"));
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_request_died_expires_after_the_lease() {
    let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
    let inner = Inner::new();
    let service = layer(Arc::clone(&cache))
        .pending_lease(Duration::from_secs(5))
        .layer(inner.service());
    // A node claimed the key and died mid-request: its pending record is all that is left.
    let doomed = tokio::spawn({
        let service = service.clone();
        let req = with_header(publish("1", &keyed(EVENT, "k")), "x-delay-ms", "60000");
        async move { service.oneshot(req).await }
    });
    while inner.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    doomed.abort();
    let early = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(
        early.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "still within the lease"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let retry = send(&service, publish("1", &keyed(EVENT, "k"))).await;
    assert_eq!(
        retry.status,
        StatusCode::OK,
        "the lease ended: the retry runs"
    );
    assert_eq!(inner.calls(), 2);
}
