//! One connection's task: it owns the socket, and `select!`s over the socket, its outbound
//! queue, its close switch, the node's drain signal and the activity timer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use sockudo_core::app::App;
use sockudo_core::protocol::{ErrorCode, OutboundFrame, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use sockudo_core::history::recovery;

use super::handler::{Flow, Session};
use super::v2::{ChannelPlan, ResumePlan};
use crate::connection::{Connection, Outbox, QueueLimits};
use crate::namespace::Namespace;
use crate::node::Node;

pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A connection the node accepted (quota slot already reserved).
#[derive(Debug)]
pub struct Accepted {
    pub app: Arc<App>,
    pub protocol: ProtocolVersion,
    pub namespace: Arc<Namespace>,
}

/// A connection the node refuses with a Pusher code.
#[derive(Debug)]
pub struct Refusal {
    protocol: ProtocolVersion,
    code: ErrorCode,
}

impl Refusal {
    pub fn new(protocol: ProtocolVersion, code: ErrorCode) -> Self {
        Refusal { protocol, code }
    }
}

/// How long closing handshakes may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;

async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Send the error the Pusher way (an error event, then a close with the same code).
pub async fn refuse(mut ws: Ws, refusal: Refusal) {
    let code = refusal.code;
    let text = OutboundFrame::error(refusal.protocol.family(), code.message(), Some(code.code()));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::text(text))).await;
    close_with(&mut ws, code.code(), code.message()).await;
}

/// Write `first` and whatever else is already queued, then flush once.
async fn write_batch(ws: &mut Ws, first: tokio_tungstenite::tungstenite::Utf8Bytes, outbox: &mut Outbox, conn: &Connection) -> Result<(), WsError> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        match outbox.try_recv(conn) {
            Some(f) => ws.feed(Message::Text(f)).await?,
            None => break,
        }
    }
    ws.flush().await
}

/// Write every frame already queued, then flush.
async fn write_queued(ws: &mut Ws, outbox: &mut Outbox, conn: &Connection) -> Result<(), WsError> {
    while let Some(f) = outbox.try_recv(conn) {
        ws.feed(Message::Text(f)).await?;
    }
    ws.flush().await
}

/// Execute a resume plan: what was queued before it goes first, then per channel the replay
/// and the held live frames (checked contiguous), then the outcome frames.
async fn write_resume(ws: &mut Ws, outbox: &mut Outbox, conn: &Connection, plan: ResumePlan) -> Result<Option<ErrorCode>, WsError> {
    write_queued(ws, outbox, conn).await?;
    let mut broken = false;
    for step in plan.channels {
        match step {
            ChannelPlan::Recovered { channel, replay, continue_after } => {
                for f in replay {
                    ws.feed(Message::Text(f)).await?;
                }
                match recovery::merge_held(continue_after, conn.release(&channel)) {
                    Ok(held) => {
                        for (_, f) in held {
                            ws.feed(Message::Text(f)).await?;
                        }
                    }
                    // Live frames after the replay are not contiguous: never pretend they are.
                    Err(_) => broken = true,
                }
            }
            ChannelPlan::Failed { channel, failed } => {
                ws.feed(Message::text(failed)).await?;
                for (_, f) in conn.release(&channel) {
                    ws.feed(Message::Text(f)).await?;
                }
            }
        }
    }
    if broken {
        ws.flush().await?;
        return Ok(Some(ErrorCode::ReconnectImmediately));
    }
    if let Some(success) = plan.success {
        ws.feed(Message::text(success)).await?;
    }
    ws.flush().await?;
    Ok(None)
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Code(u16, &'static str),
    /// The peer went away or the socket failed: nothing more to send.
    Gone,
}

pub async fn run(node: Arc<Node>, mut ws: Ws, accepted: Accepted) {
    let Accepted { app, protocol, namespace } = accepted;
    let socket_id = node.next_socket_id();
    let limits = QueueLimits { frames: node.settings.outbound_queue_frames, bytes: node.settings.outbound_queue_bytes };
    let (conn, mut outbox) = Connection::new(Arc::clone(&socket_id), app, protocol, limits);
    namespace.add_connection(Arc::clone(&conn));
    tracing::debug!(app_id = %conn.app.id, socket_id = %socket_id, "connection opened");

    let family = protocol.family();
    let activity = Duration::from_secs(node.settings.activity_timeout);
    let pong_wait = Duration::from_secs(node.settings.pong_timeout);
    let drain = node.drain_token();
    let mut session = Session::new(Arc::clone(&node), Arc::clone(&conn), Arc::clone(&namespace));

    let hello = OutboundFrame::connection_established(family, &socket_id, node.settings.activity_timeout);
    let end = if ws.send(Message::text(hello)).await.is_err() {
        End::Gone
    } else {
        let mut deadline = Instant::now() + activity;
        let mut pinged = false;
        loop {
            tokio::select! {
                biased;
                code = conn.close_requested() => break End::Code(code, close_reason(code)),
                _ = drain.cancelled() => break End::Code(ErrorCode::ReconnectImmediately.code(), ErrorCode::ReconnectImmediately.message()),
                frame = outbox.recv(&conn) => {
                    let Some(frame) = frame else { break End::Gone };
                    let written = tokio::select! {
                        r = write_batch(&mut ws, frame, &mut outbox, &conn) => r,
                        code = conn.close_requested() => { break End::Code(code, close_reason(code)) }
                    };
                    if written.is_err() { break End::Gone }
                }
                msg = ws.next() => {
                    deadline = Instant::now() + activity;
                    pinged = false;
                    match msg {
                        None => break End::Gone,
                        Some(Err(WsError::Capacity(_))) => break End::Code(1009, "message too big"),
                        Some(Err(e)) => {
                            tracing::debug!(socket_id = %socket_id, error = %e, "socket error");
                            break End::Gone;
                        }
                        Some(Ok(Message::Text(text))) => match session.handle_text(&text).await {
                            Flow::Continue => {}
                            Flow::Close(code) => {
                                // The handler queued its `pusher:error` for this code: deliver
                                // what is queued before the close frame.
                                let _ = tokio::time::timeout(CLOSE_TIMEOUT, write_queued(&mut ws, &mut outbox, &conn)).await;
                                break End::Code(code.code(), code.message());
                            }
                            Flow::Resume(plan) => {
                                let written = tokio::select! {
                                    r = write_resume(&mut ws, &mut outbox, &conn, plan) => r,
                                    code = conn.close_requested() => { break End::Code(code, close_reason(code)) }
                                };
                                match written {
                                    Ok(None) => {}
                                    Ok(Some(code)) => break End::Code(code.code(), "cannot prove continuity after replay: reconnect and resume"),
                                    Err(_) => break End::Gone,
                                }
                            }
                        },
                        Some(Ok(Message::Binary(_))) => session.reject_binary(),
                        Some(Ok(Message::Close(_))) => break End::Gone,
                        // Ping frames are answered by tungstenite on the next write/flush.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            let _ = ws.flush().await;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    if pinged {
                        break End::Code(ErrorCode::PongNotReceived.code(), ErrorCode::PongNotReceived.message());
                    }
                    pinged = true;
                    deadline = Instant::now() + pong_wait;
                    if ws.send(Message::text(OutboundFrame::ping(family))).await.is_err() {
                        break End::Gone;
                    }
                }
            }
        }
    };

    session.cleanup().await;
    namespace.remove_connection(&conn);
    match end {
        End::Code(code, reason) => {
            tracing::debug!(socket_id = %socket_id, code, "closing connection");
            close_with(&mut ws, code, reason).await;
        }
        End::Gone => tracing::debug!(socket_id = %socket_id, "connection gone"),
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        4009 => ErrorCode::Unauthorized.message(),
        4100 => "Over capacity: client too slow to read",
        4200 => ErrorCode::ReconnectImmediately.message(),
        4201 => ErrorCode::PongNotReceived.message(),
        _ => "closed",
    }
}
