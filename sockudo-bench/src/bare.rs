//! `--mode bare-server`: the baseline a node's fanout is compared with. A WebSocket server
//! that speaks just enough of protocol 7 for this tool's clients (`connection_established`,
//! `subscription_succeeded`, `pong`) and an HTTP `POST /apps/{id}/events` that turns each
//! event into one frame and hands it to every connection through one `tokio::sync::broadcast`
//! channel; each connection's task writes what it receives. No auth, no channels (every
//! connection gets every event), no history, no limits: the cost of "receive a publish, put
//! it on every socket" with Tokio and tungstenite, and nothing else.
//!
//! Run it, then point `--mode publish` at it exactly as at a node:
//! `sockudo-bench --mode bare-server --bare-ws 127.0.0.1:6301 --bare-http 127.0.0.1:6302` and
//! `sockudo-bench --url ws://127.0.0.1:6301 --http http://127.0.0.1:6302 -n 10000 …`.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames a slow connection may fall behind by before it counts as lagging (and loses them).
const BACKLOG: usize = 65_536;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Serve until killed.
pub async fn run(ws: SocketAddr, http: SocketAddr) -> Result<String, String> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(BACKLOG);
    let ws_listener = TcpListener::bind(ws)
        .await
        .map_err(|e| format!("bind {ws}: {e}"))?;
    let http_listener = TcpListener::bind(http)
        .await
        .map_err(|e| format!("bind {http}: {e}"))?;
    eprintln!("bare-server: WebSocket on {ws}, HTTP on {http}");
    let publisher = tx.clone();
    let api = tokio::spawn(crate::http_sink::serve(
        http_listener,
        b"{}",
        Arc::new(move |body: &[u8]| publish(&publisher, body)),
    ));
    loop {
        let (stream, _) = ws_listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let rx = tx.subscribe();
        tokio::spawn(connection(stream, rx));
        if api.is_finished() {
            return Err("the HTTP listener stopped".into());
        }
    }
}

async fn connection(stream: TcpStream, mut rx: broadcast::Receiver<Utf8Bytes>) {
    let _ = stream.set_nodelay(true);
    // The node's buffer sizes, so the baseline does not pay for bigger ones.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let hello = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#;
    if ws.send(Message::text(hello)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(f) => if ws.send(Message::Text(f)).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(reply) = answer(&t) {
                        if ws.send(Message::text(reply)).await.is_err() { return }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// The reply to a client frame: subscription success or pong.
fn answer(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v.get("event")?.as_str()? {
        "pusher:subscribe" => {
            let channel = v.get("data")?.get("channel")?.as_str()?;
            Some(
                serde_json::json!({
                    "event": "pusher_internal:subscription_succeeded",
                    "channel": channel,
                    "data": "{}",
                })
                .to_string(),
            )
        }
        "pusher:ping" => Some(r#"{"event":"pusher:pong","data":{}}"#.to_owned()),
        _ => None,
    }
}

/// One frame per channel of the event, each to every connection.
fn publish(tx: &broadcast::Sender<Utf8Bytes>, body: &[u8]) -> StatusCode {
    let Ok(ev) = serde_json::from_slice::<Event<'_>>(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let channels: Vec<&str> = match (&ev.channel, &ev.channels) {
        (Some(c), _) => vec![*c],
        (None, Some(cs)) => cs.iter().map(String::as_str).collect(),
        (None, None) => return StatusCode::BAD_REQUEST,
    };
    for channel in channels {
        let frame = serde_json::json!({ "event": ev.name, "channel": channel, "data": ev.data });
        // No receiver yet is not an error for a baseline.
        let _ = tx.send(Utf8Bytes::from(frame.to_string()));
    }
    StatusCode::OK
}
