//! Service-level tests of [`RateLimit`]: responses, headers, keys, failure modes, readiness.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{service_fn, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

use super::*;
use crate::app::App;
use crate::cache::{Cache, MemoryCache};
use crate::layers::api_auth::AuthenticatedApp;
use crate::layers::test_support::FailingCache;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// 1 per second, burst 2, on a fixed clock the test moves.
fn layer_with(cache: Arc<dyn Cache>, now: Arc<AtomicU64>) -> RateLimitLayer {
    let limiter = RateLimiter::new(cache, Quota::per_second(nz(1)).allow_burst(nz(2)))
        .clock(move || now.load(Ordering::SeqCst));
    RateLimitLayer::from_limiter(limiter)
}

fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                req.uri().path().to_owned(),
            ))))
        }
    })
}

fn app_request(app: &str, path: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(AuthenticatedApp(Arc::new(App::new(
            app,
            format!("key-{app}"),
            "s",
        ))));
    req
}

async fn json_of(response: Response<Full<Bytes>>) -> Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn header<'a>(response: &'a Response<Full<Bytes>>, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn allowed_then_429_with_headers_and_json() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let service =
        layer_with(Arc::new(MemoryCache::new()), now.clone()).layer(counting(calls.clone()));

    let first = service
        .clone()
        .oneshot(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        (
            header(&first, "x-ratelimit-limit"),
            header(&first, "x-ratelimit-remaining"),
            header(&first, "x-ratelimit-reset")
        ),
        ("2", "1", "1")
    );
    let second = service
        .clone()
        .oneshot(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(
        (
            header(&second, "x-ratelimit-remaining"),
            header(&second, "x-ratelimit-reset")
        ),
        ("0", "2")
    );

    let third = service
        .clone()
        .oneshot(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "retry-after"), "1");
    assert_eq!(header(&third, "content-type"), "application/json");
    assert_eq!(
        (
            header(&third, "x-ratelimit-limit"),
            header(&third, "x-ratelimit-remaining"),
            header(&third, "x-ratelimit-reset")
        ),
        ("2", "0", "2")
    );
    assert_eq!(
        json_of(third).await,
        json!({"error": "rate limit exceeded; retry in 1 s", "status": 429})
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a limited request never reaches the inner service"
    );

    now.fetch_add(1_000, Ordering::SeqCst);
    let later = service
        .oneshot(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(later.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn budgets_are_per_app_and_route_class() {
    let now = Arc::new(AtomicU64::new(5_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer_with(Arc::new(MemoryCache::new()), now).layer(counting(calls.clone()));
    let status = |app: &'static str, path: &'static str| {
        let service = service.clone();
        async move {
            service
                .oneshot(app_request(app, path))
                .await
                .unwrap()
                .status()
        }
    };
    // Two channels of one app share the `GET /apps/*/channels/*` budget.
    assert_eq!(status("1", "/apps/1/channels/a").await, StatusCode::OK);
    assert_eq!(status("1", "/apps/1/channels/b").await, StatusCode::OK);
    assert_eq!(
        status("1", "/apps/1/channels/c").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another route class and another app have budgets of their own.
    assert_eq!(status("1", "/apps/1/channels").await, StatusCode::OK);
    assert_eq!(status("2", "/apps/2/channels/a").await, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn request_without_key_passes_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(Arc::new(FailingCache), Quota::per_second(nz(1)))
        .fail_mode(FailMode::Closed)
        .layer(counting(calls.clone()));
    // No AuthenticatedApp: no key, so not even the (failing) cache is consulted.
    let response = service
        .oneshot(
            Request::get("/apps/1/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cache_failure_fails_open_by_default() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(Arc::new(FailingCache), Quota::per_second(nz(1)));
    assert_eq!(layer.get_fail_mode(), FailMode::Open);
    let service = layer.layer(counting(calls.clone()));
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(app_request("1", "/apps/1/events"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn cache_failure_fails_closed_when_asked() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(Arc::new(FailingCache), Quota::per_second(nz(1)))
        .fail_mode(FailMode::Closed)
        .layer(counting(calls.clone()));
    let response = service
        .oneshot(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, "retry-after"), "1");
    assert_eq!(
        json_of(response).await,
        json!({"error": "rate limiter unavailable", "status": 503})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn rejection_statuses() {
    let limited = RateLimitRejection::Limited(gcra_decide(0, Some(5_000), 1_000, 1));
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let response: Response<Full<Bytes>> = limited.into_response();
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(
        RateLimitRejection::CacheUnavailable.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

type MockRequest = Request<Full<Bytes>>;
type MockResponse = Response<Full<Bytes>>;

fn mock_layer() -> RateLimitLayer {
    RateLimitLayer::new(
        Arc::new(MemoryCache::new()),
        Quota::per_second(nz(1)).allow_burst(nz(1)),
    )
}

#[tokio::test]
async fn readiness_passes_through_and_the_readied_service_is_called() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(mock_layer());
    handle.allow(0);
    assert!(
        service.poll_ready().is_pending(),
        "inner not ready => layer not ready"
    );
    handle.allow(1);
    assert!(service.is_woken());
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));

    // `Mock` panics if a clone that was not polled ready is called.
    let response = tokio::spawn(service.call(app_request("1", "/apps/1/events")));
    let (req, reply) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/apps/1/events");
    reply.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert!(service.poll_ready().is_pending(), "allow(1) was used up");
}

#[tokio::test]
async fn rejection_never_reaches_the_readied_inner_service() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(mock_layer());
    handle.allow(3);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let first = tokio::spawn(service.call(app_request("1", "/apps/1/events")));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new(Full::new(Bytes::new())));
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);

    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let second = service
        .call(app_request("1", "/apps/1/events"))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(handle.next_request().now_or_never().is_none());
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let (mut service, mut handle) =
        tower_test::mock::spawn_layer::<MockRequest, MockResponse, _>(mock_layer());
    handle.allow(1);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let response = tokio::spawn(service.call(app_request("1", "/apps/1/events")));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("inner exploded");
    assert_eq!(
        response.await.unwrap().unwrap_err().to_string(),
        "inner exploded"
    );
    handle.send_error("inner closed");
    match service.poll_ready() {
        Poll::Ready(Err(error)) => assert_eq!(error.to_string(), "inner closed"),
        other => panic!("expected a readiness error, got {other:?}"),
    }
}

#[tokio::test]
async fn works_in_an_axum_router_keyed_by_client_ip() {
    use axum::routing::get;
    use axum::Router;

    let layer = RateLimitLayer::new(
        Arc::new(MemoryCache::new()),
        Quota::per_second(nz(1)).allow_burst(nz(1)),
    )
    .key_by(KeyBy::ClientIp {
        trusted_proxy_hops: 1,
    });
    let router = Router::new()
        .route("/app/{key}", get(|| async { "upgrade" }))
        .route_layer(layer);
    let request = |xff: &str| {
        let mut req = Request::get("/app/key")
            .header("x-forwarded-for", xff)
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("10.0.0.1:1234".parse().unwrap()));
        req
    };
    let status = |xff: &'static str| {
        let router = router.clone();
        async move { router.oneshot(request(xff)).await.unwrap().status() }
    };
    assert_eq!(status("1.1.1.1").await, StatusCode::OK);
    // A spoofed left-hand entry does not create a new budget: the proxy's entry counts.
    assert_eq!(
        status("9.9.9.9, 1.1.1.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status("2.2.2.2").await, StatusCode::OK);
}

#[tokio::test]
async fn client_ip_without_an_address_is_rejected_not_unlimited() {
    use axum::routing::get;
    use axum::Router;

    let layer = RateLimitLayer::new(
        Arc::new(MemoryCache::new()),
        Quota::per_second(nz(1000)).allow_burst(nz(1000)),
    )
    .key_by(KeyBy::ClientIp {
        trusted_proxy_hops: 0,
    });
    let router = Router::new()
        .route("/x", get(|| async { "served" }))
        .route_layer(layer);
    let req = Request::get("/x").body(axum::body::Body::empty()).unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let mut req = Request::get("/x").body(axum::body::Body::empty()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr("10.0.0.1:1234".parse().unwrap()));
    assert_eq!(router.oneshot(req).await.unwrap().status(), StatusCode::OK);
}

#[test]
fn layer_and_service_are_clone_send_sync_debug() {
    fn assert_traits<T: Clone + Send + Sync + std::fmt::Debug + 'static>(_: &T) {}
    let layer = mock_layer();
    assert_traits(&layer);
    let service = layer.layer(counting(Arc::new(AtomicUsize::new(0))));
    assert!(format!("{layer:?}").contains("RateLimitLayer"));
    let service = RateLimit::new(service, &layer);
    let _ = service.get_ref();
    assert!(format!("{:?}", layer.layer(())).contains("RateLimit"));
}
