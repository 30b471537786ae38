//! The Pusher HTTP API (docs/protocol.md §5), behind the core's tower layers.
//!
//! Handlers receive the authenticated app and the already-read body from the layer's request
//! extensions, so signature checking exists once, in `sockudo_core::layers`.
//!
//! Per route, outermost first: API auth (every route) → idempotency (the two publish routes,
//! docs/protocol.md §7) → rate limit (every route, per app and route class, when
//! `api_rate_limit_per_second` > 0) → handler. Auth comes first so the other two know the app
//! and unauthenticated traffic spends no budget; idempotency comes before the rate limit so a
//! replayed retry spends none either (and a 429 is never stored as the key's answer).

mod channels;
mod error;
mod events;
mod push_extras;
mod users;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use sockudo_core::cache::Cache;
use sockudo_core::layers::api_auth::ApiAuthLayer;
use sockudo_core::layers::idempotency::IdempotencyLayer;
use sockudo_core::layers::rate_limit::{Quota, RateLimitLayer};

use crate::config::NodeSettings;
use crate::node::Node;

/// The API routes with their layers (see the module docs for the order).
///
/// An axum `route_layer` wraps the routes added before it, and each call wraps the result of
/// the previous ones: the *last* call is the *outermost* layer. Hence the calls below run in
/// reverse order of the request's path through them.
pub fn api_router(node: Arc<Node>) -> Router {
    api_router_with_prefix(node, None)
}

/// [`api_router`] for an API that is `nest`ed under `prefix` (e.g. `"/realtime"`): axum hands
/// the nested routes the stripped path, while clients sign the full one, so the API-auth layer
/// is told the prefix ([`ApiAuthLayer::path_prefix`]) and accepts a signature over either.
pub(crate) fn api_router_with_prefix(node: Arc<Node>, prefix: Option<&'static str>) -> Router {
    let auth = match prefix {
        Some(prefix) => ApiAuthLayer::new(Arc::clone(&node.apps)).path_prefix(prefix),
        None => ApiAuthLayer::new(Arc::clone(&node.apps)),
    };
    let idempotency = IdempotencyLayer::new(Arc::clone(&node.cache))
        .ttl(Duration::from_secs(node.settings.idempotency_ttl));
    let rate_limit = api_rate_limit(&node.settings, &node.cache);

    let mut publish = Router::<Arc<Node>>::new()
        .route("/apps/{app_id}/events", post(events::trigger))
        .route("/apps/{app_id}/batch_events", post(events::trigger_batch));
    let mut others = Router::<Arc<Node>>::new()
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(channels::show))
        .route("/apps/{app_id}/channels/{channel}/users", get(users::list))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(users::terminate),
        );
    #[cfg(feature = "push")]
    {
        others = others.merge(crate::push::routes(&node));
    }
    if let Some(rate_limit) = rate_limit {
        publish = publish.route_layer(rate_limit.clone());
        others = others.route_layer(rate_limit);
    }
    publish
        .route_layer(idempotency)
        .merge(others)
        .route_layer(auth)
        .route_layer(axum::middleware::from_fn(count_api_responses))
        .with_state(node)
}

/// Outermost API layer: counts what the core's layers decided, from their answers alone (the
/// core knows nothing of metrics): 429 is a rate-limit rejection, 409 an idempotency conflict,
/// `X-Idempotent-Replayed: true` a replayed retry; and every response by status class.
async fn count_api_responses(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    let status = response.status();
    match status.as_u16() {
        429 => metrics::counter!(crate::metrics::RATE_LIMITED, "scope" => "http").increment(1),
        409 => metrics::counter!(crate::metrics::IDEMPOTENCY_CONFLICTS).increment(1),
        _ => {}
    }
    if response
        .headers()
        .get("x-idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        metrics::counter!(crate::metrics::IDEMPOTENCY_REPLAYS).increment(1);
    }
    let class = match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(crate::metrics::HTTP_RESPONSES, "status" => class).increment(1);
    response
}

/// The API rate limit configured in `settings`, if any.
fn api_rate_limit(settings: &NodeSettings, cache: &Arc<dyn Cache>) -> Option<RateLimitLayer> {
    let rate = NonZeroU32::new(settings.api_rate_limit_per_second)?;
    let burst = NonZeroU32::new(settings.api_rate_limit_burst).unwrap_or(rate);
    let quota = Quota::per_second(rate).allow_burst(burst);
    Some(RateLimitLayer::new(Arc::clone(cache), quota))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use sockudo_core::app::App;
    use sockudo_core::auth::sign_api_request;
    use tower::ServiceExt;

    use super::*;

    fn router(rate: u32, burst: u32) -> Router {
        let settings = NodeSettings {
            apps: vec![App::new("1", "key", "secret")],
            api_rate_limit_per_second: rate,
            api_rate_limit_burst: burst,
            ..NodeSettings::default()
        };
        api_router(crate::server::build_node_memory(settings))
    }

    fn signed(method: &str, path: &str, body: &str, key: Option<&str>) -> Request<Body> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let query = sign_api_request("key", "secret", method, path, &[], body.as_bytes(), now);
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{path}?{query}"))
            .header("content-type", "application/json");
        if let Some(key) = key {
            builder = builder.header("x-idempotency-key", key);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    }

    async fn send(router: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
        let response = router.clone().oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    const EVENT: &str = r#"{"name":"e","channel":"news","data":"hi"}"#;

    #[tokio::test]
    async fn layer_order_is_auth_then_idempotency_then_rate_limit() {
        let router = router(1, 2);
        // Unauthenticated: 401 from the outermost layer, no budget spent.
        for _ in 0..3 {
            let mut req = signed("POST", "/apps/1/events", EVENT, None);
            *req.uri_mut() = "/apps/1/events?auth_key=key".parse().unwrap();
            let (status, headers, _) = send(&router, req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(headers.get("x-ratelimit-limit").is_none());
        }
        // 1: keyed publish; 2: an SDK-style publish without a key. Budget (2) spent.
        let (status, headers, first) =
            send(&router, signed("POST", "/apps/1/events", EVENT, Some("k1"))).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(headers["x-ratelimit-remaining"], "1");
        let (status, headers, _) =
            send(&router, signed("POST", "/apps/1/events", EVENT, None)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        // The retry of 1 is replayed by the idempotency layer, outside the rate limit.
        let (status, headers, replay) =
            send(&router, signed("POST", "/apps/1/events", EVENT, Some("k1"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-idempotent-replayed"], "true");
        assert_eq!(replay, first);
        // A new publish is limited, and its 429 is not stored under its key.
        let (status, headers, body) =
            send(&router, signed("POST", "/apps/1/events", EVENT, Some("k2"))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert!(headers.get("x-idempotent-replayed").is_none());
        // Another route class has its own budget.
        let (status, _, body) = send(&router, signed("GET", "/apps/1/channels", "", None)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn without_a_rate_limit_publishes_are_idempotent_and_unlimited() {
        let router = router(0, 0);
        for _ in 0..5 {
            let (status, headers, _) =
                send(&router, signed("POST", "/apps/1/events", EVENT, None)).await;
            assert_eq!(status, StatusCode::OK);
            assert!(headers.get("x-ratelimit-limit").is_none());
        }
        let keyed = r#"{"name":"e","channel":"news","data":"hi","idempotency_key":"b1"}"#;
        send(&router, signed("POST", "/apps/1/events", keyed, None)).await;
        let (status, headers, _) =
            send(&router, signed("POST", "/apps/1/events", keyed, None)).await;
        assert_eq!(
            (status, headers["x-idempotent-replayed"].to_str().unwrap()),
            (StatusCode::OK, "true")
        );
        let changed = r#"{"name":"e","channel":"news","data":"bye","idempotency_key":"b1"}"#;
        let (status, _, body) =
            send(&router, signed("POST", "/apps/1/events", changed, None)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }

    #[tokio::test]
    async fn batch_items_with_used_keys_are_skipped_and_conflicts_refuse_the_batch() {
        let router = router(0, 0);
        let batch = |items: &str| format!(r#"{{"batch":[{items}]}}"#);
        let a = r#"{"name":"e","channel":"news","data":"a","idempotency_key":"ia"}"#;
        let b = r#"{"name":"e","channel":"news","data":"b","idempotency_key":"ib"}"#;
        let a_changed = r#"{"name":"e","channel":"news","data":"A","idempotency_key":"ia"}"#;
        let c = r#"{"name":"e","channel":"news","data":"c","idempotency_key":"ic"}"#;
        let (status, _, body) = send(
            &router,
            signed("POST", "/apps/1/batch_events", &batch(a), None),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // `a` again (skipped) plus a new `b`: accepted.
        let (status, _, body) = send(
            &router,
            signed(
                "POST",
                "/apps/1/batch_events",
                &batch(&format!("{a},{b}")),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, r#"{"batch":[{},{}]}"#);
        // `c` is new but `ia` now names another payload: 409, and `c` is not used up.
        let (status, _, body) = send(
            &router,
            signed(
                "POST",
                "/apps/1/batch_events",
                &batch(&format!("{c},{a_changed}")),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("batch[1]"), "{body}");
        let node_cache_still_free = send(
            &router,
            signed("POST", "/apps/1/batch_events", &batch(c), None),
        )
        .await;
        assert_eq!(node_cache_still_free.0, StatusCode::OK);
        // Too long an item key: 400.
        let long = format!(
            r#"{{"name":"e","channel":"news","data":"x","idempotency_key":"{}"}}"#,
            "k".repeat(129)
        );
        let (status, _, _) = send(
            &router,
            signed("POST", "/apps/1/batch_events", &batch(&long), None),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
