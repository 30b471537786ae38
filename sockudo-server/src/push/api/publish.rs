//! Publish, batch publish, status and scheduled-publish cancel.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sockudo_core::layers::api_auth::{AuthenticatedApp, RequestBody};
use sockudo_core::push::{PublishState, StatusUpdate};

use super::push_of;
use crate::node::Node;
use crate::push::admission::admit;
use crate::push::model::{PublishRequest, MAX_BATCH};
use crate::push::{status, PushError};

fn header_key(headers: &HeaderMap) -> Result<Option<String>, PushError> {
    match headers.get("x-idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| PushError::BadRequest("X-Idempotency-Key must be visible ASCII".into())),
    }
}

/// `POST publish`: admit one publish (202 + its status).
pub async fn publish(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
    headers: HeaderMap,
) -> Result<Response, PushError> {
    let push = push_of(&node)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| PushError::BadRequest(format!("invalid JSON: {e}")))?;
    let req = PublishRequest::from_value(value)?;
    let admitted = admit(push, &app.id, req, header_key(&headers)?.as_deref()).await?;
    let mut resp = (StatusCode::ACCEPTED, Json(admitted.body)).into_response();
    if admitted.replayed {
        resp.headers_mut().insert(
            "x-idempotent-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// `POST batch/publish`: admit up to 100 publishes, one result each, in order.
pub async fn batch(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), PushError> {
    let push = push_of(&node)?;
    if headers.contains_key("x-idempotency-key") {
        return Err(PushError::BadRequest(
            "X-Idempotency-Key names one publish: give each batch item its publishId or idempotency_key".into(),
        ));
    }
    let items: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| PushError::BadRequest(format!("batch/publish takes a JSON array: {e}")))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(PushError::BadRequest(format!(
            "a batch holds 1 to {MAX_BATCH} publishes"
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let result = match PublishRequest::from_value(item) {
            Ok(req) => admit(push, &app.id, req, None).await,
            Err(e) => Err(e),
        };
        out.push(match result {
            Ok(a) => a.body,
            Err(e) => {
                let message = e.to_string();
                let status = e.into_response().status().as_u16();
                json!({"error": {"status": status, "message": message}})
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"items": out}))))
}

/// `GET publish/{id}/status`.
pub async fn status(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app, publish_id)): Path<(String, String)>,
) -> Result<Json<Value>, PushError> {
    let push = push_of(&node)?;
    match push.store.get_status(&app.id, &publish_id).await? {
        Some(s) => Ok(Json(status::render(&app.id, &s))),
        None => Err(PushError::NotFound(format!(
            "no publish {publish_id:?} (or its status retention passed)"
        ))),
    }
}

/// `DELETE scheduled/{id}`: cancel a publish that is not over (204).
pub async fn cancel(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app, publish_id)): Path<(String, String)>,
) -> Result<StatusCode, PushError> {
    let push = push_of(&node)?;
    let Some(s) = push.store.get_status(&app.id, &publish_id).await? else {
        return Err(PushError::NotFound(format!("no publish {publish_id:?}")));
    };
    if s.state.is_terminal() {
        return Err(PushError::Conflict(format!(
            "publish {publish_id:?} is already {}",
            s.state.as_str()
        )));
    }
    let update = StatusUpdate {
        state: Some(PublishState::Cancelled),
        error_reason: Some("cancelled".into()),
        now_ms: crate::push::now_ms(),
        ..StatusUpdate::default()
    };
    match push
        .store
        .update_status(&app.id, &publish_id, &update)
        .await?
    {
        Some(after) if after.state == PublishState::Cancelled => Ok(StatusCode::NO_CONTENT),
        Some(after) => Err(PushError::Conflict(format!(
            "publish {publish_id:?} is already {}",
            after.state.as_str()
        ))),
        None => Err(PushError::NotFound(format!("no publish {publish_id:?}"))),
    }
}
