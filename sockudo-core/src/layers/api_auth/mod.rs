//! Authentication of Pusher HTTP API requests (docs/protocol.md §5) as a tower middleware.
//!
//! [`ApiAuthLayer`] wraps a service in [`ApiAuth`], which checks each request, in this order,
//! and answers the first failure itself with a [`json_error`](crate::layers::json_error) body
//! (`{"error":"…","status":…}`), never calling the inner service:
//!
//! | check | failure |
//! | --- | --- |
//! | `Content-Length` (or the body's size hint) within [`max_body_bytes`](ApiAuthLayer::max_body_bytes) | 413 |
//! | the query has `auth_key`, `auth_timestamp`, `auth_version`, `auth_signature` and decodes | 400 |
//! | an app has that `auth_key` ([`AppManager::find_by_key`](crate::app::AppManager::find_by_key)) | 401 `unknown auth_key` (503 if the manager fails) |
//! | a path segment pair `apps/{id}`, if present, names that app | 401 `app id does not match auth_key` |
//! | the app is enabled | 403 |
//! | the body, read up to the limit | 413 (400 if it cannot be read) |
//! | [`ApiQuery::verify`](crate::auth::ApiQuery::verify): version, timestamp window, `body_md5`, signature | 400 / 401 |
//!
//! On success the request reaches the inner service with the body already read and put back
//! (same body type), and with these [extensions](http::Extensions):
//!
//! - [`AuthenticatedApp`]: the app the request authenticated as;
//! - [`RequestBody`]: the body bytes, so handlers and later layers need not read it again;
//! - [`ApiQuery`](crate::auth::ApiQuery): the parsed, decoded query (`get("info")`, …).
//!
//! Readiness is the inner service's: `poll_ready` delegates, and the instance polled ready is
//! the one called. The inner service's error type passes through unchanged; rejections are
//! responses.
//!
//! The signature covers the request path exactly as the client sent it, so mount the layer
//! where `uri().path()` is still the full path: on the top-level router, not inside an axum
//! `nest` (which strips the prefix).
//!
//! # Example
//!
//! ```rust
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::time::{SystemTime, UNIX_EPOCH};
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use sockudo_core::app::{App, StaticAppManager};
//! use sockudo_core::auth::sign_api_request;
//! use sockudo_core::layers::api_auth::{ApiAuthLayer, AuthenticatedApp, RequestBody};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! async fn events(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     // Both extensions are always present behind the layer.
//!     let app = req.extensions().get::<AuthenticatedApp>().map(|app| app.0.id.clone());
//!     let len = req.extensions().get::<RequestBody>().map_or(0, |body| body.0.len());
//!     let text = format!("app {} sent {len} bytes", app.unwrap_or_default());
//!     Ok(Response::new(Full::new(Bytes::from(text))))
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let apps = Arc::new(StaticAppManager::new([App::new("1", "app-key", "app-secret")]));
//!     let service = ServiceBuilder::new()
//!         .layer(ApiAuthLayer::new(apps))
//!         .service(service_fn(events));
//!
//!     let body: &'static [u8] = br#"{"name":"greet","channel":"news","data":"hi"}"#;
//!     let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//!     let query = sign_api_request("app-key", "app-secret", "POST", "/apps/1/events", &[], body, now);
//!     let request = Request::post(format!("/apps/1/events?{query}")).body(Full::new(Bytes::from_static(body)))?;
//!     let response = service.clone().oneshot(request).await?;
//!     assert_eq!(response.status(), StatusCode::OK);
//!     let text = response.into_body().collect().await?.to_bytes();
//!     assert_eq!(text, format!("app 1 sent {} bytes", body.len()));
//!
//!     // A bad signature is answered by the layer; `events` never runs.
//!     let forged = query.replace("auth_key=app-key", "auth_key=app-key&info=user_count");
//!     let request = Request::post(format!("/apps/1/events?{forged}")).body(Full::new(Bytes::from_static(body)))?;
//!     let response = service.oneshot(request).await?;
//!     assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!     assert_eq!(response.headers()["content-type"], "application/json");
//!     let text = response.into_body().collect().await?.to_bytes();
//!     assert_eq!(text, r#"{"error":"invalid auth_signature","status":401}"#);
//!     Ok(())
//! }
//! ```

mod error;
mod future;
mod layer;
mod service;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use crate::app::App;

pub use error::ApiAuthRejection;
pub use future::ResponseFuture;
pub use layer::{ApiAuthLayer, DEFAULT_MAX_BODY_BYTES};
pub use service::ApiAuth;

/// Request extension: the app the request authenticated as (its key, signature and path id
/// all checked). Present on every request [`ApiAuth`] lets through.
///
/// With axum: `Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>`.
#[derive(Debug, Clone)]
pub struct AuthenticatedApp(pub Arc<App>);

/// Request extension: the request body as read and verified (`body_md5`) by [`ApiAuth`].
/// The body itself is also put back, so either may be used; this one is free to clone.
#[derive(Debug, Clone)]
pub struct RequestBody(pub Bytes);
