//! `axum-mount`: an existing axum application with its own routes and state that mounts
//! Sockudo under a path prefix.
//!
//! [`app`] builds the whole router:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the app's own page |
//! | `GET /api/todos`, `POST /api/todos` | the app's own API over its [`AppState`]; a new todo is also published on the `todos` channel through the embedded node |
//! | `GET /realtime/app/{key}` | the Sockudo WebSocket endpoint (pusher-js: `wsPath: '/realtime'`) |
//! | `/realtime/apps/{id}/...` | the Pusher HTTP API; signatures over the full, prefixed path are accepted |
//! | `/apps/{id}/...` | the same API at the root, for the official server SDKs (they have no path option) |
//! | `GET /realtime/health`, `GET /realtime/ready` | the node's health and readiness |
//! | `POST /realtime-admin/publish` | the app's own handler behind the three core tower layers: API auth → idempotency → rate limit |
//!
//! Mounting Sockudo is one line:
//!
//! ```no_run
//! # fn mount(node: std::sync::Arc<sockudo_server::Node>, my_app: axum::Router) -> axum::Router {
//! sockudo_server::mount(my_app, "/realtime", node)
//! # }
//! ```
//!
//! Serve the result with `axum::serve(listener, app.into_make_service())`: WebSocket upgrades
//! work through it (see `main.rs`, which also drains the node on Ctrl-C).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sockudo_core::layers::rate_limit::{Quota, RateLimitLayer};
use sockudo_core::layers::{
    json_error, ApiAuthLayer, AuthenticatedApp, IdempotencyLayer, RequestBody,
};
use sockudo_server::send::SendError;
use sockudo_server::Node;
use tokio::sync::RwLock;

/// Where Sockudo is mounted: the WebSocket endpoint and the Pusher HTTP API live below it.
pub const REALTIME_PREFIX: &str = "/realtime";

/// The app's own route protected by the core layers.
pub const ADMIN_PUBLISH_PATH: &str = "/realtime-admin/publish";

/// The channel new todos are announced on.
pub const TODOS_CHANNEL: &str = "todos";

/// Requests `POST /realtime-admin/publish` allows back to back, per app.
pub const ADMIN_BURST: NonZeroU32 = match NonZeroU32::new(3) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The sustained rate of `POST /realtime-admin/publish`, per app: one request per second.
pub const ADMIN_RATE_PER_SECOND: NonZeroU32 = NonZeroU32::MIN;

/// One todo of the app's own data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    /// Its id.
    pub id: u64,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// The app's own state: its todos, plus a handle on the embedded node so its handlers can
/// publish without going through HTTP.
#[derive(Debug, Clone)]
pub struct AppState {
    todos: Arc<RwLock<Vec<Todo>>>,
    node: Arc<Node>,
}

impl AppState {
    /// State with two seed todos.
    pub fn new(node: Arc<Node>) -> Self {
        let todos = vec![
            Todo {
                id: 1,
                title: "mount sockudo under /realtime".into(),
                done: true,
            },
            Todo {
                id: 2,
                title: "point pusher-js at wsPath '/realtime'".into(),
                done: false,
            },
        ];
        AppState {
            todos: Arc::new(RwLock::new(todos)),
            node,
        }
    }
}

/// The whole application: the app's own routes, Sockudo under [`REALTIME_PREFIX`], and the
/// layered admin route.
pub fn app(node: Arc<Node>) -> Router {
    let state = AppState::new(Arc::clone(&node));

    // The app's own route behind the core layers. `route_layer` wraps what is above it, so the
    // last call is the outermost layer: API auth → idempotency → rate limit → handler. Auth
    // first so the others know the app; idempotency before the rate limit so a replayed retry
    // spends no budget. Both use the node's cache, so budgets and keys are cluster-wide when
    // the node runs on Redis.
    let quota = Quota::per_second(ADMIN_RATE_PER_SECOND).allow_burst(ADMIN_BURST);
    let admin = Router::new()
        .route(ADMIN_PUBLISH_PATH, post(admin_publish))
        .route_layer(RateLimitLayer::new(Arc::clone(&node.cache), quota))
        .route_layer(IdempotencyLayer::new(Arc::clone(&node.cache)))
        .route_layer(ApiAuthLayer::new(Arc::clone(&node.apps)));

    let own = Router::new()
        .route("/", get(index))
        .route("/api/todos", get(list_todos).post(create_todo))
        .merge(admin)
        .with_state(state);
    // Sockudo itself under the prefix: WebSocket endpoint, Pusher HTTP API (a signature over
    // `/realtime/apps/{id}/events` verifies although `nest` strips `/realtime`), health; and
    // the Pusher HTTP API at the root too, where the official server SDKs (no path option)
    // send it.
    sockudo_server::mount(own, REALTIME_PREFIX, node)
}

async fn index() -> &'static str {
    "todo app: GET /api/todos; realtime at /realtime (pusher-js wsPath '/realtime')\n"
}

async fn list_todos(State(state): State<AppState>) -> Json<Vec<Todo>> {
    Json(state.todos.read().await.clone())
}

/// Body of `POST /api/todos`.
#[derive(Debug, Deserialize)]
pub struct NewTodo {
    /// What to do.
    pub title: String,
}

/// Store a todo, then announce it as `todo-created` on [`TODOS_CHANNEL`] of the node's first
/// app, through the node's publish path (no HTTP round trip).
async fn create_todo(State(state): State<AppState>, Json(new): Json<NewTodo>) -> Response {
    let todo = {
        let mut todos = state.todos.write().await;
        let id = todos.iter().map(|t| t.id).max().unwrap_or(0) + 1;
        let todo = Todo {
            id,
            title: new.title,
            done: false,
        };
        todos.push(todo.clone());
        todo
    };
    let Some(app_id) = state.node.settings.apps.first().map(|app| app.id.clone()) else {
        return json_error::<Body>(StatusCode::INTERNAL_SERVER_ERROR, "no app configured");
    };
    // Clients get `data` as a string holding the todo's JSON (the Pusher convention).
    let published = state
        .node
        .publish(&app_id, TODOS_CHANNEL, "todo-created", &todo)
        .await;
    match published {
        Ok(_) => (StatusCode::CREATED, Json(todo)).into_response(),
        Err(e) => send_error(e),
    }
}

/// Body of `POST /realtime-admin/publish`: one event, Pusher style (`data` is usually a
/// string). An `idempotency_key` field (or the `X-Idempotency-Key` header) makes retries safe.
#[derive(Debug, Deserialize)]
pub struct AdminPublish {
    /// The channel to publish on.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// The event data (usually a string holding JSON).
    pub data: Box<RawValue>,
}

/// Answer of `POST /realtime-admin/publish`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminPublished {
    /// The authenticated app.
    pub app_id: String,
    /// The channel published on.
    pub channel: String,
    /// The message's id.
    pub message_id: String,
    /// Its serial (with history).
    pub serial: Option<u64>,
}

/// The app's own publish endpoint. Behind the layers it is handed the authenticated app and
/// the already-read body as request extensions; it never sees an unsigned, replayed or
/// over-budget request.
async fn admin_publish(
    State(state): State<AppState>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
) -> Response {
    let req: AdminPublish = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => {
            return json_error::<Body>(StatusCode::BAD_REQUEST, &format!("invalid body: {e}"))
        }
    };
    let published = state
        .node
        .publish(&app.id, &req.channel, &req.event, &*req.data)
        .await;
    match published {
        Ok(published) => Json(AdminPublished {
            app_id: app.id.clone(),
            channel: req.channel,
            message_id: published.message_id.to_string(),
            serial: published.serial,
        })
        .into_response(),
        Err(e) => send_error(e),
    }
}

/// A refused or failed publish as the JSON error response to send.
fn send_error(e: SendError) -> Response {
    let status = match e {
        SendError::Publish(_) | SendError::Apps(_) => StatusCode::SERVICE_UNAVAILABLE,
        SendError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    json_error::<Body>(status, &e.to_string())
}
