//! Device registrations: create/update, get, list, delete (one, or every device of a client).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};
use sockudo_core::layers::api_auth::{AuthenticatedApp, RequestBody};
use sockudo_core::push::DeviceRecord;

use super::{page, page_params, push_of};
use crate::node::Node;
use crate::push::model::DeviceDetails;
use crate::push::{now_ms, PushError};

/// Most devices one `DELETE ?clientId=` removes (a client owns a handful).
const MAX_CLIENT_DELETE: usize = 10_000;

fn public(r: &DeviceRecord) -> Value {
    serde_json::from_str::<DeviceDetails>(&r.body)
        .map_or_else(|_| json!({"id": r.id}), |d| d.public())
}

/// `POST deviceRegistrations`: create or update a registration (201).
pub async fn upsert(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
) -> Result<(StatusCode, Json<Value>), PushError> {
    let push = push_of(&node)?;
    let mut d = DeviceDetails::parse(&body)?;
    d.updated_at_ms = now_ms();
    let stored = serde_json::to_string(&d).map_err(|e| PushError::BadRequest(e.to_string()))?;
    let record = DeviceRecord {
        id: d.id.clone(),
        client_id: d.client_id.clone(),
        body: stored,
    };
    push.store.put_device(&app.id, &record).await?;
    Ok((StatusCode::CREATED, Json(d.public())))
}

/// `GET deviceRegistrations`: a page of registrations (of one client with `clientId`).
pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let (limit, after) = page_params(&app.id, &q)?;
    let client = q.get("clientid").filter(|c| !c.is_empty());
    let rows = push
        .store
        .list_devices(
            &app.id,
            client.map(String::as_str),
            after.as_deref(),
            limit + 1,
        )
        .await?;
    Ok(Json(page(&app.id, rows, limit, |r| r.id.clone(), public)))
}

/// `DELETE deviceRegistrations?clientId=`: remove every device of a client.
pub async fn delete_by_client(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let Some(client) = q.get("clientid").filter(|c| !c.is_empty()) else {
        return Err(PushError::BadRequest(
            "DELETE deviceRegistrations needs ?clientId=".into(),
        ));
    };
    let mut deleted = 0usize;
    while deleted < MAX_CLIENT_DELETE {
        let rows = push
            .store
            .list_devices(&app.id, Some(client), None, 1000)
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            if push.store.delete_device(&app.id, &r.id).await? {
                deleted += 1;
            }
        }
    }
    Ok(Json(json!({"deleted": deleted})))
}

/// `GET deviceRegistrations/{id}`.
pub async fn show(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app, device_id)): Path<(String, String)>,
) -> Result<Json<Value>, PushError> {
    let push = push_of(&node)?;
    let found = push
        .store
        .get_devices(&app.id, std::slice::from_ref(&device_id))
        .await?;
    match found.into_iter().next().flatten() {
        Some(r) => Ok(Json(public(&r))),
        None => Err(PushError::NotFound(format!("no device {device_id:?}"))),
    }
}

/// `DELETE deviceRegistrations/{id}` (its subscriptions go too).
pub async fn delete_one(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app, device_id)): Path<(String, String)>,
) -> Result<StatusCode, PushError> {
    let push = push_of(&node)?;
    if push.store.delete_device(&app.id, &device_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(PushError::NotFound(format!("no device {device_id:?}")))
    }
}
