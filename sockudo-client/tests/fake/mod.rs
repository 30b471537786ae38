//! A scripted WebSocket server for the V2 tests: the test plays the server, frame by frame.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sockudo_client::{
    ChannelEvent, Client, ClientOptions, ConstantBackoff, Protocol, Subscription,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<TcpStream>;

/// A server that hands each accepted WebSocket to the test, in order.
pub async fn fake_server() -> (String, mpsc::Receiver<Ws>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                if tx.send(ws).await.is_err() {
                    break;
                }
            }
        }
    });
    (url, rx)
}

pub async fn accept(conns: &mut mpsc::Receiver<Ws>, socket_id: &str) -> Ws {
    let mut ws = tokio::time::timeout(WAIT, conns.recv())
        .await
        .unwrap()
        .unwrap();
    let data = json!({"socket_id": socket_id, "activity_timeout": 120}).to_string();
    send(
        &mut ws,
        json!({"event": "sockudo:connection_established", "data": data}),
    )
    .await;
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::text(frame.to_string())).await.unwrap();
}

/// The next frame named `event`, with its data decoded.
pub async fn expect(ws: &mut Ws, event: &str) -> (Value, Value) {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let WsMessage::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        if frame["event"] == event {
            let data = match &frame["data"] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            };
            return (frame, data);
        }
    }
}

pub fn subscribed(channel: &str, stream_id: &str, serial: u64) -> Value {
    json!({"event": "sockudo_internal:subscription_succeeded", "channel": channel,
           "data": json!({"stream_id": stream_id, "serial": serial}).to_string()})
}

pub fn message(channel: &str, stream_id: &str, serial: u64) -> Value {
    json!({"event": "update", "channel": channel, "data": format!("payload {serial}"),
           "message_id": message_id(stream_id, serial), "serial": serial, "stream_id": stream_id})
}

/// The `message_id` [`message`] gives serial `serial` of `stream_id`.
pub fn message_id(stream_id: &str, serial: u64) -> String {
    format!("{stream_id}:{serial}")
}

/// V2 options for `url` with a short constant backoff.
pub fn v2_options(url: &str) -> ClientOptions {
    ClientOptions::new("app-key")
        .url(url)
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(ConstantBackoff(Duration::from_millis(50)))
        .request_timeout(WAIT)
}

pub async fn client(url: &str) -> Client {
    Client::connect(v2_options(url)).await.unwrap()
}

pub async fn next(sub: &mut Subscription) -> ChannelEvent {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
}

pub fn serial_of(event: &ChannelEvent) -> Option<u64> {
    match event {
        ChannelEvent::Message(m) => m.serial,
        _ => None,
    }
}

/// The next text frame the client sent, whatever its event, with its data decoded.
pub async fn next_frame(ws: &mut Ws) -> (Value, Value) {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let WsMessage::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        let data = match &frame["data"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            other => other.clone(),
        };
        return (frame, data);
    }
}

/// Subscribe `channel` and answer with head `stream_id`/`serial`.
pub async fn subscribe_at(
    client: &Client,
    ws: &mut Ws,
    channel: &str,
    stream_id: &str,
    serial: u64,
) -> Subscription {
    let (sub, _) = tokio::join!(client.subscribe(channel), async {
        let (_, data) = expect(ws, "sockudo:subscribe").await;
        assert_eq!(data["channel"], channel);
        send(ws, subscribed(channel, stream_id, serial)).await;
    });
    sub.unwrap()
}

/// Close with 4200 (reconnect at once).
pub async fn close_4200(ws: &mut Ws) {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4200),
        reason: "draining".into(),
    }))
    .await
    .unwrap();
}

/// A `sockudo:resume_failed` for `channel` (on the frame and in the data).
pub fn resume_failed(channel: &str, code: &str) -> Value {
    let data = json!({"channel": channel, "code": code, "reason": "test"});
    json!({"event": "sockudo:resume_failed", "channel": channel, "data": data.to_string()})
}

/// A `sockudo:resume_success` recovering `recovered` (channel, serial on `s1`) and
/// failing `failed`.
pub fn resume_success(recovered: &[(&str, u64)], failed: &[&str]) -> Value {
    let recovered: Vec<Value> = recovered
        .iter()
        .map(|(c, s)| {
            json!({"channel": c, "source": "hot", "replayed": 0,
            "position": {"stream_id": "s1", "serial": s, "last_message_id": message_id("s1", *s)}})
        })
        .collect();
    let failed: Vec<Value> = failed
        .iter()
        .map(|c| json!({"channel": c, "code": "position_expired", "reason": "test"}))
        .collect();
    let data = json!({"recovered": recovered, "failed": failed});
    json!({"event": "sockudo:resume_success", "data": data.to_string()})
}
