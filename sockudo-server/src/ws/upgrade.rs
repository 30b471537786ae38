//! HTTP → WebSocket upgrade for `GET /app/{key}`.
//!
//! We perform the RFC 6455 handshake ourselves (instead of a framework extractor) so that the
//! WebSocket configuration, which dominates per-connection memory, is ours to set, and so that
//! connection-level refusals (unknown app, bad protocol) are delivered the Pusher way: upgrade,
//! send `pusher:error` with the code, close with the same code.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sockudo_core::adapter::ClusterQuery;
use sockudo_core::protocol::{ErrorCode, ProtocolVersion};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::session::{self, Refusal};
use crate::node::Node;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!(
        "{{\"error\":{},\"status\":{}}}",
        serde_json::Value::from(msg),
        status.as_u16()
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Validate the handshake headers and build the 101 response; `Err` is the HTTP refusal.
// Both variants are responses handed straight back to hyper: boxing the refusal buys nothing.
#[allow(clippy::result_large_err)]
fn handshake_response(headers: &HeaderMap) -> Result<Response<Body>, Response<Body>> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint expects a WebSocket upgrade",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(plain(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version (13 required)",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

/// Bytes of frames gathered before a write during a batch (the batch's flush writes the rest).
const WRITE_BUFFER: usize = 4096;

pub(crate) fn ws_config(node: &Node) -> WebSocketConfig {
    // A small eager read buffer keeps idle connections cheap; it grows for large frames.
    // The write buffer lets the frames of one batch (see `session::write_batch`: everything
    // already queued, then one flush) leave in one `sendto` instead of one each; it only
    // fills while a batch is written, and stays small (a connection that never had more than
    // one frame queued at a time never grows it past its largest frame).
    // Messages well over the node's frame limit are cut off by tungstenite itself (close 1009);
    // frames just over it get a friendly `pusher:error` from the handler instead.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(
            node.settings
                .outbound_queue_bytes
                .saturating_mul(2)
                .max(64 * 1024),
        )
        .max_message_size(Some(node.settings.max_frame_bytes.saturating_mul(2)))
        .max_frame_size(Some(node.settings.max_frame_bytes.saturating_mul(2)))
}

/// Upgrade and hand the socket to a session, or to a refusal that closes it with a code.
fn upgrade<F, Fut>(node: Arc<Node>, req: Request<Body>, outcome: F) -> Response<Body>
where
    F: FnOnce(Arc<Node>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<session::Accepted, Refusal>> + Send,
{
    if node.is_draining() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "node is draining");
    }
    let resp = match handshake_response(req.headers()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(on_upgrade) = req
        .into_parts()
        .0
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection cannot be upgraded (server not run with upgrades)",
        );
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws_config(&node)),
        )
        .await;
        match outcome(Arc::clone(&node)).await {
            Ok(accepted) => session::run(node, ws, accepted).await,
            Err(refusal) => session::refuse(ws, refusal).await,
        }
    });
    resp
}

/// `GET /app/{key}`.
pub async fn ws_handler(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    req: Request<Body>,
) -> Response<Body> {
    let protocol = query.get("protocol").cloned();
    // App lookup may hit a remote app manager, so it happens before spawning the session
    // but its failure is still reported over the socket, the way Pusher clients expect.
    let lookup = node.apps.find_by_key(&key).await;
    upgrade(node, req, move |node| async move {
        let protocol = match protocol.as_deref() {
            None | Some("") => {
                return Err(Refusal::new(ProtocolVersion::V1, ErrorCode::NoProtocol))
            }
            Some(p) => match ProtocolVersion::from_query(p) {
                Some(v) => v,
                None if p.chars().all(|c| c.is_ascii_digit()) => {
                    return Err(Refusal::new(
                        ProtocolVersion::V1,
                        ErrorCode::UnsupportedProtocol,
                    ))
                }
                None => {
                    return Err(Refusal::new(
                        ProtocolVersion::V1,
                        ErrorCode::InvalidVersionFormat,
                    ))
                }
            },
        };
        let app = match lookup {
            Ok(Some(app)) => app,
            Ok(None) => return Err(Refusal::new(protocol, ErrorCode::AppNotFound)),
            Err(e) => {
                tracing::warn!(error = %e, "app manager unavailable during connect");
                return Err(Refusal::new(protocol, ErrorCode::OverCapacity));
            }
        };
        if !app.enabled {
            return Err(Refusal::new(protocol, ErrorCode::AppDisabled));
        }
        let ns = node.namespace(&app.id);
        if !ns.try_reserve_connection(app.max_connections) {
            return Err(Refusal::new(protocol, ErrorCode::OverConnectionQuota));
        }
        if app.max_connections > 0 {
            // The quota is cluster-wide: our reservation is already counted in the total.
            let q = ClusterQuery::ConnectionCount {
                app_id: app.id.clone(),
            };
            match node.adapter.query(q).await {
                Ok(total) if total.count() <= app.max_connections => {}
                Ok(_) => {
                    ns.release_reservation();
                    return Err(Refusal::new(protocol, ErrorCode::OverConnectionQuota));
                }
                Err(e) => {
                    tracing::warn!(error = %e, app_id = %app.id, "cannot count cluster connections; refusing");
                    ns.release_reservation();
                    return Err(Refusal::new(protocol, ErrorCode::OverCapacity));
                }
            }
        }
        Ok(session::Accepted {
            app,
            protocol,
            namespace: ns,
        })
    })
}

/// Any other path: WebSocket upgrades are closed with 4005, plain requests get 404.
pub async fn ws_fallback(State(node): State<Arc<Node>>, req: Request<Body>) -> Response<Body> {
    if header_has_token(req.headers(), header::UPGRADE, "websocket") {
        return upgrade(node, req, |_| async {
            Err(Refusal::new(ProtocolVersion::V1, ErrorCode::PathNotFound))
        });
    }
    plain(StatusCode::NOT_FOUND, "not found")
}
