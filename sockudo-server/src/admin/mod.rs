//! The apps admin API: its own listener (`ADMIN_PORT`) and bearer token (`ADMIN_TOKEN`),
//! off unless both are set, and only with a SQL app manager (the config checks both).
//!
//! | request | answer |
//! |---|---|
//! | `GET /apps` | 200 `{"apps":[{id, key, enabled, …}]}` (no secrets) |
//! | `POST /apps` (JSON; `id`/`key`/`secret` optional, generated when absent) | 201 the app, with its secret |
//! | `GET /apps/{id}` | 200 the app, with its secret; 404 |
//! | `PATCH /apps/{id}` (JSON: limits, `enabled`, `enable_client_messages`, `webhooks`) | 200 the app |
//! | `POST /apps/{id}/secret` | 200 the app with a new random secret |
//! | `DELETE /apps/{id}` | 204; 404 |
//!
//! Errors are JSON `{"error": "...", "status": N}`: 400 (not JSON), 401 (token), 404, 409
//! (id or key taken), 413 (body over 64 KB), 422 (a field out of range), 503 (database).
//! After every write the change is announced to every node over the cluster adapter, so
//! their caches drop the old copy at once.

mod input;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sockudo_core::app::{App, AppStore, AppStoreError};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::node::Node;
pub use input::{AppFields, CreateApp, Invalid};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
struct AdminState {
    node: Arc<Node>,
    store: Arc<dyn AppStore>,
    token: Arc<str>,
}

/// An admin API failure, answered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 401: no or a wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 404: no app with this id.
    #[error("no app with this id")]
    NotFound,
    /// 409: the id or key is taken.
    #[error("an app with this id or key exists")]
    Conflict,
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the app would be invalid.
    #[error("{0}")]
    Invalid(String),
    /// The body could not be read (too large: 413).
    #[error("{1}")]
    Body(StatusCode, String),
    /// 503: the app database cannot answer.
    #[error("app database unavailable: {0}")]
    Unavailable(String),
}

impl From<AppStoreError> for AdminError {
    fn from(e: AppStoreError) -> Self {
        match e {
            AppStoreError::Conflict => AdminError::Conflict,
            AppStoreError::NotFound => AdminError::NotFound,
            AppStoreError::Backend(e) => AdminError::Unavailable(e.to_string()),
        }
    }
}

impl From<Invalid> for AdminError {
    fn from(e: Invalid) -> Self {
        AdminError::Invalid(e.0)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::Conflict => StatusCode::CONFLICT,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Body(status, _) => *status,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut r = sockudo_core::layers::json_error::<axum::body::Body>(status, &self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The admin router for `node` (which must have an app store).
pub fn router(node: Arc<Node>, token: &str) -> Option<Router> {
    let store = Arc::clone(node.app_store()?);
    let state = AdminState {
        node,
        store,
        token: Arc::from(token),
    };
    let r = Router::new()
        .route("/apps", get(list).post(create))
        .route("/apps/{id}", get(show).patch(update).delete(remove))
        .route("/apps/{id}/secret", post(rotate))
        .fallback(|| async { AdminError::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    Some(r)
}

async fn auth(
    State(st): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authorized(req.headers(), &st.token) {
        return AdminError::Unauthorized.into_response();
    }
    next.run(req).await
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn full(app: &App) -> serde_json::Value {
    serde_json::to_value(app).unwrap_or_else(|_| json!({"id": app.id}))
}

/// Tell every node; a failure leaves the change to each node's poll (logged, and said in the
/// answer).
async fn announce(st: &AdminState, id: &str) -> bool {
    match crate::apps::announce_change(&st.node, id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(app_id = %id, error = %e, "app change not announced to the cluster; nodes see it at their next poll");
            false
        }
    }
}

fn answer(status: StatusCode, app: &App, notified: bool) -> Response {
    let mut body = full(app);
    body["cluster_notified"] = json!(notified);
    (status, Json(body)).into_response()
}

async fn list(State(st): State<AdminState>) -> Result<Response, AdminError> {
    let apps = st.store.list().await?;
    let items: Vec<input::AppSummary<'_>> = apps
        .iter()
        .map(|a| input::AppSummary {
            id: &a.id,
            key: &a.key,
            enabled: a.enabled,
            enable_client_messages: a.enable_client_messages,
            max_connections: a.max_connections,
        })
        .collect();
    Ok(Json(json!({ "apps": items })).into_response())
}

/// The request body, or the JSON error for one that cannot be read (over 64 KB: 413).
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, AdminError> {
    b.map_err(|r| AdminError::Body(r.status(), r.body_text()))
}

async fn create(
    State(st): State<AdminState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let b = body(raw)?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&b) {
        return Err(AdminError::BadRequest(format!("body is not JSON: {e}")));
    }
    let app = CreateApp::parse(&b)?.into_app()?;
    st.store.create(&app).await?;
    tracing::info!(app_id = %app.id, "app created through the admin API");
    let notified = announce(&st, &app.id).await;
    Ok(answer(StatusCode::CREATED, &app, notified))
}

async fn load(st: &AdminState, id: &str) -> Result<App, AdminError> {
    input::check_name("id", id)?;
    st.store.get(id).await?.ok_or(AdminError::NotFound)
}

async fn show(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    Ok(Json(full(&load(&st, &id).await?)).into_response())
}

async fn update(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let fields: AppFields = serde_json::from_slice(&body(raw)?).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            AdminError::BadRequest(format!("body is not JSON: {e}"))
        } else {
            AdminError::Invalid(format!(
                "body: {e} (id, key and secret cannot be patched; rotate the secret with POST /apps/{{id}}/secret)"
            ))
        }
    })?;
    let mut app = load(&st, &id).await?;
    fields.apply(&mut app)?;
    st.store.update(&app).await?;
    tracing::info!(app_id = %app.id, enabled = app.enabled, "app updated through the admin API");
    let notified = announce(&st, &app.id).await;
    Ok(answer(StatusCode::OK, &app, notified))
}

async fn rotate(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let mut app = load(&st, &id).await?;
    app.secret = input::random_hex(20);
    st.store.update(&app).await?;
    tracing::info!(app_id = %app.id, "app secret rotated through the admin API");
    let notified = announce(&st, &app.id).await;
    Ok(answer(StatusCode::OK, &app, notified))
}

async fn remove(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    input::check_name("id", &id)?;
    if !st.store.delete(&id).await? {
        return Err(AdminError::NotFound);
    }
    tracing::info!(app_id = %id, "app deleted through the admin API");
    announce(&st, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Bind and serve the admin API when configured; records the bound address on the node.
pub async fn start(
    node: &Arc<Node>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    let a = &node.settings.admin;
    let (Some(port), Some(token)) = (a.port, a.token.as_deref()) else {
        return Ok(None);
    };
    let Some(app) = router(Arc::clone(node), token) else {
        return Err(std::io::Error::other(
            "the admin API needs a SQL app manager (APP_MANAGER_DRIVER=postgres or mysql)",
        ));
    };
    let addr = format!("{}:{port}", node.settings.host);
    let listener = TcpListener::bind(&addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the admin API: {e}"),
        )
    })?;
    let bound: SocketAddr = listener.local_addr()?;
    node.set_admin_addr(bound);
    tracing::info!(addr = %bound, "admin API listening");
    Ok(Some(tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "admin listener failed");
        }
    })))
}
