//! One connection's task: it owns the socket, and `select!`s over the socket, its outbound
//! queue, its close switch, the node's drain signal and the activity timer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
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

/// What a connection task runs over: an upgraded HTTP connection in production, an in-memory
/// pipe in unit tests.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

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

async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Send the error the Pusher way (an error event, then a close with the same code).
pub async fn refuse(mut ws: Ws, refusal: Refusal) {
    let code = refusal.code;
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "code" => code.code().to_string())
        .increment(1);
    tracing::debug!(code = code.code(), "connection refused");
    let text = OutboundFrame::error(refusal.protocol.family(), code.message(), Some(code.code()));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::text(text))).await;
    close_with(&mut ws, code.code(), code.message()).await;
}

/// Write `first` and whatever else is already queued, then flush once.
async fn write_batch<S: Socket>(
    ws: &mut WebSocketStream<S>,
    first: tokio_tungstenite::tungstenite::Utf8Bytes,
    outbox: &mut Outbox,
    conn: &Connection,
    sent: &metrics::Counter,
) -> Result<(), WsError> {
    let mut bytes = first.len();
    ws.feed(Message::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        match outbox.try_recv(conn) {
            Some(f) => {
                bytes += f.len();
                ws.feed(Message::Text(f)).await?
            }
            None => break,
        }
    }
    sent.increment(bytes as u64);
    ws.flush().await
}

/// Write every frame already queued, then flush.
async fn write_queued<S: Socket>(
    ws: &mut WebSocketStream<S>,
    outbox: &mut Outbox,
    conn: &Connection,
    sent: &metrics::Counter,
) -> Result<(), WsError> {
    while let Some(f) = outbox.try_recv(conn) {
        sent.increment(f.len() as u64);
        ws.feed(Message::Text(f)).await?;
    }
    ws.flush().await
}

/// Execute a resume plan: what was queued before it goes first, then per channel the replay
/// and the held live frames (checked contiguous), then the outcome frames.
async fn write_resume<S: Socket>(
    ws: &mut WebSocketStream<S>,
    outbox: &mut Outbox,
    conn: &Connection,
    plan: ResumePlan,
    sent: &metrics::Counter,
) -> Result<Option<ErrorCode>, WsError> {
    write_queued(ws, outbox, conn, sent).await?;
    let mut broken = false;
    for step in plan.channels {
        match step {
            ChannelPlan::Recovered {
                channel,
                stream_id,
                replay,
                continue_after,
            } => {
                for f in replay {
                    sent.increment(f.len() as u64);
                    ws.feed(Message::Text(f)).await?;
                }
                let held = conn.release_after(&channel, Some((&stream_id, continue_after)));
                // A held frame of another stream (a reset raced the replay) cannot follow it.
                let same_stream = held
                    .iter()
                    .all(|h| h.stream_id.as_deref().is_none_or(|s| s == stream_id));
                let merged = if same_stream {
                    recovery::merge_held(
                        continue_after,
                        held.into_iter().map(|h| (h.serial, h.frame)).collect(),
                    )
                    .ok()
                } else {
                    None
                };
                match merged {
                    Some(frames) => {
                        for (_, f) in frames {
                            sent.increment(f.len() as u64);
                            ws.feed(Message::Text(f)).await?;
                        }
                    }
                    // Live frames after the replay are not provably contiguous: never pretend.
                    None => broken = true,
                }
            }
            ChannelPlan::Failed { channel, failed } => {
                ws.feed(Message::text(failed)).await?;
                for h in conn.release(&channel) {
                    sent.increment(h.frame.len() as u64);
                    ws.feed(Message::Text(h.frame)).await?;
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

/// Re-arm the resume-wait timer after a client frame (which may have added a wait).
fn rearm(session: &Session, waits: std::pin::Pin<&mut tokio::time::Sleep>) {
    if let Some(next) = session.next_deadline() {
        if next != waits.deadline() {
            waits.reset(next);
        }
    }
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Code(u16, &'static str),
    /// The peer went away or the socket failed: nothing more to send.
    Gone,
}

pub(crate) async fn run<S: Socket>(
    node: Arc<Node>,
    mut ws: WebSocketStream<S>,
    accepted: Accepted,
) {
    let Accepted {
        app,
        protocol,
        namespace,
    } = accepted;
    let socket_id = node.next_socket_id();
    let limits = QueueLimits {
        frames: node.settings.outbound_queue_frames,
        bytes: node.settings.outbound_queue_bytes,
    };
    let (conn, mut outbox) = Connection::new(Arc::clone(&socket_id), app, protocol, limits);
    namespace.add_connection(Arc::clone(&conn));
    let app_label = conn.app.id.clone();
    let _connected = crate::metrics::ConnectionGauge::open(&namespace.app_id);
    let protocol_label = if protocol == ProtocolVersion::V2 {
        "2"
    } else {
        "7"
    };
    metrics::counter!(crate::metrics::CONNECTIONS_OPENED, "app_id" => app_label.clone(), "protocol" => protocol_label).increment(1);
    let bytes_in = metrics::counter!(crate::metrics::BYTES_IN, "app_id" => app_label.clone());
    let bytes_out = metrics::counter!(crate::metrics::BYTES_OUT, "app_id" => app_label.clone());
    tracing::debug!(app_id = %conn.app.id, socket_id = %socket_id, protocol = protocol_label, "connection opened");

    let family = protocol.family();
    let activity = Duration::from_secs(node.settings.activity_timeout);
    let pong_wait = Duration::from_secs(node.settings.pong_timeout);
    let drain = node.drain_token();
    let mut session = Session::new(Arc::clone(&node), Arc::clone(&conn), Arc::clone(&namespace));

    let hello =
        OutboundFrame::connection_established(family, &socket_id, node.settings.activity_timeout);
    // Every write is bounded by the pong timeout: a peer that takes no data for that long
    // (zero TCP window) is as gone as one that does not answer pings, and a write that never
    // completes must not keep the task (and its subscriptions) alive.
    let write_limit = pong_wait;
    let sent = tokio::time::timeout(write_limit, ws.send(Message::text(hello))).await;
    let end = if !matches!(sent, Ok(Ok(()))) {
        End::Gone
    } else {
        // The loop borrows the socket and the session: when it panics, both are still here,
        // so the cleanup below runs on every exit path (subscriptions, presence, interest,
        // quota) and the client is told with 1011.
        let looped = async {
            // The loop runs once per delivered frame, so everything it waits on is created once
            // and polled by reference: no timer re-registration and no waiter list churn on the
            // node-wide drain token per message. Activity only stamps `last_seen`; the one timer
            // is re-armed when it fires.
            let mut last_seen = Instant::now();
            let mut ping_sent: Option<Instant> = None;
            let timer = sleep_until(last_seen + activity);
            tokio::pin!(timer);
            let drained = drain.clone().cancelled_owned();
            tokio::pin!(drained);
            let closing = conn.close_requested();
            tokio::pin!(closing);
            // V2 resume waits (parked positions, post-subscribe grace holds): armed only while
            // the session has some, re-armed after every client frame.
            let waits = sleep_until(last_seen + activity);
            tokio::pin!(waits);
            loop {
                tokio::select! {
                    biased;
                    code = &mut closing => break End::Code(code, close_reason(code)),
                    _ = &mut drained => break End::Code(ErrorCode::ReconnectImmediately.code(), ErrorCode::ReconnectImmediately.message()),
                    frame = outbox.recv(&conn) => {
                        let Some(frame) = frame else { break End::Gone };
                        let written = tokio::select! {
                            r = tokio::time::timeout(write_limit, write_batch(&mut ws, frame, &mut outbox, &conn, &bytes_out)) => r,
                            code = &mut closing => { break End::Code(code, close_reason(code)) }
                        };
                        if !matches!(written, Ok(Ok(()))) { break End::Gone }
                    }
                    msg = ws.next() => {
                        last_seen = Instant::now();
                        if let Some(Ok(Message::Text(text))) = &msg {
                            bytes_in.increment(text.len() as u64);
                        }
                        match msg {
                            None => break End::Gone,
                            Some(Err(WsError::Capacity(_))) => break End::Code(1009, "message too big"),
                            Some(Err(e)) => {
                                tracing::debug!(app_id = %app_label, socket_id = %socket_id, error = %e, "socket error");
                                break End::Gone;
                            }
                            Some(Ok(Message::Text(text))) => {
                                let flow = session.handle_text(&text).await;
                                rearm(&session, waits.as_mut());
                                match flow {
                                Flow::Continue => {}
                                Flow::Close(code) => {
                                    // The handler queued its `pusher:error` for this code: deliver
                                    // what is queued before the close frame.
                                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, write_queued(&mut ws, &mut outbox, &conn, &bytes_out)).await;
                                    break End::Code(code.code(), code.message());
                                }
                                Flow::Resume(plan) => {
                                    let written = tokio::select! {
                                        r = tokio::time::timeout(write_limit, write_resume(&mut ws, &mut outbox, &conn, plan, &bytes_out)) => r,
                                        code = &mut closing => { break End::Code(code, close_reason(code)) }
                                    };
                                    match written {
                                        Ok(Ok(None)) => {}
                                        Ok(Ok(Some(code))) => break End::Code(code.code(), "cannot prove continuity after replay: reconnect and resume"),
                                        Ok(Err(_)) | Err(_) => break End::Gone,
                                    }
                                }
                                }
                            }
                            Some(Ok(Message::Binary(_))) => session.reject_binary(),
                            Some(Ok(Message::Close(_))) => break End::Gone,
                            // Ping frames are answered by tungstenite on the next write/flush.
                            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                                if !matches!(tokio::time::timeout(write_limit, ws.flush()).await, Ok(Ok(()))) {
                                    break End::Gone;
                                }
                            }
                        }
                    }
                    _ = &mut waits, if session.has_waits() => {
                        session.on_deadline(Instant::now());
                        if let Some(next) = session.next_deadline() {
                            waits.as_mut().reset(next);
                        }
                    }
                    _ = &mut timer => {
                        let now = Instant::now();
                        match ping_sent {
                            // Anything heard since our ping counts as the answer.
                            Some(sent) if last_seen >= sent => {
                                ping_sent = None;
                                timer.as_mut().reset(last_seen + activity);
                            }
                            Some(_) => break End::Code(ErrorCode::PongNotReceived.code(), ErrorCode::PongNotReceived.message()),
                            None if last_seen + activity > now => timer.as_mut().reset(last_seen + activity),
                            None => {
                                ping_sent = Some(now);
                                timer.as_mut().reset(now + pong_wait);
                                let ping = ws.send(Message::text(OutboundFrame::ping(family)));
                                if !matches!(tokio::time::timeout(write_limit, ping).await, Ok(Ok(()))) {
                                    break End::Gone;
                                }
                            }
                        }
                    }
                }
            }
        };
        match std::panic::AssertUnwindSafe(looped).catch_unwind().await {
            Ok(end) => end,
            Err(_) => {
                tracing::error!(app_id = %app_label, socket_id = %socket_id, "connection task panicked: cleaning up, closing with 1011");
                End::Code(1011, "internal error")
            }
        }
    };

    session.cleanup().await;
    namespace.remove_connection(&conn);
    match end {
        End::Code(code, reason) => {
            metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "app_id" => app_label.clone(), "code" => code.to_string()).increment(1);
            if is_error_close(code) {
                tracing::warn!(app_id = %app_label, socket_id = %socket_id, code, reason, "closing connection");
            } else {
                tracing::debug!(app_id = %app_label, socket_id = %socket_id, code, reason, "closing connection");
            }
            close_with(&mut ws, code, reason).await;
        }
        End::Gone => {
            metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "app_id" => app_label.clone(), "code" => "peer").increment(1);
            tracing::debug!(app_id = %app_label, socket_id = %socket_id, "connection closed by peer");
        }
    }
}

/// Closes that mean something went wrong (logged at warn): over capacity, pong timeout, too
/// big a message. Drains (4200), signin failures (4009) and terminations are routine.
fn is_error_close(code: u16) -> bool {
    matches!(code, 1009 | 1011 | 4100 | 4201)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use sockudo_core::auth::sign_channel;
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn next_text(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
    }

    /// A panic inside message handling still runs the cleanup: subscriptions left (presence
    /// member removed), the connection forgotten and its quota slot freed, the client closed
    /// with 1011.
    #[tokio::test]
    async fn a_panic_in_message_handling_still_cleans_the_connection_up() {
        let app = App::new("1", "key", "secret");
        let settings = crate::config::NodeSettings {
            apps: vec![app.clone()],
            ..Default::default()
        };
        let node = crate::server::build_node_memory(settings);
        let ns = node.namespace("1");
        assert!(ns.try_reserve_connection(0));
        let accepted = Accepted {
            app: Arc::new(app.clone()),
            protocol: ProtocolVersion::V1,
            namespace: Arc::clone(&ns),
        };
        let (server_io, client_io) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let task = tokio::spawn(run(Arc::clone(&node), server, accepted));

        let hello: serde_json::Value =
            serde_json::from_str(next_text(&mut client).await.unwrap().to_text().unwrap()).unwrap();
        let data: serde_json::Value =
            serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap().to_owned();
        let channel_data = r#"{"user_id":"u1"}"#;
        let auth = sign_channel(
            "key",
            "secret",
            &socket_id,
            "presence-x",
            Some(channel_data),
        );
        let sub = serde_json::json!({"event": "pusher:subscribe", "data": {
            "channel": "presence-x", "auth": auth, "channel_data": channel_data}});
        client.send(Message::text(sub.to_string())).await.unwrap();
        let ok = next_text(&mut client).await.unwrap();
        assert!(
            ok.to_text().unwrap().contains("subscription_succeeded"),
            "{ok:?}"
        );
        assert_eq!(ns.subscription_count("presence-x"), 1);
        assert_eq!(
            node.adapter
                .presence_members("1", "presence-x")
                .await
                .unwrap()
                .members
                .len(),
            1
        );

        client
            .send(Message::text(r#"{"event":"test:panic","data":{}}"#))
            .await
            .unwrap();
        let closed = loop {
            match next_text(&mut client).await {
                Some(Message::Close(frame)) => break frame,
                Some(_) => continue,
                None => panic!("no close frame"),
            }
        };
        assert_eq!(closed.map(|f| u16::from(f.code)), Some(1011));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ns.subscription_count("presence-x"), 0);
        assert!(node
            .adapter
            .presence_members("1", "presence-x")
            .await
            .unwrap()
            .members
            .is_empty());
        assert_eq!(ns.connection_count(), 0, "the quota slot is free again");
    }
}
