//! WebSocket helpers shared by the multi-process modes: connect, wait for an event, subscribe,
//! in either protocol family (`pusher:` for protocol 7, `sockudo:` for protocol 2).

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::ws_config;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Protocol family of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Protocol 7, `pusher:` events.
    V1,
    /// Protocol 2, `sockudo:` events.
    V2,
}

impl Family {
    /// `pusher:` / `sockudo:`.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::V1 => "pusher:",
            Family::V2 => "sockudo:",
        }
    }

    /// `pusher_internal:` / `sockudo_internal:`.
    pub fn internal(self) -> &'static str {
        match self {
            Family::V1 => "pusher_internal:",
            Family::V2 => "sockudo_internal:",
        }
    }

    /// `protocol=` query value.
    pub fn protocol(self) -> u8 {
        match self {
            Family::V1 => 7,
            Family::V2 => 2,
        }
    }

    /// The pong frame answering a ping.
    pub fn pong(self) -> String {
        format!(r#"{{"event":"{}pong","data":{{}}}}"#, self.prefix())
    }
}

/// `{ws_base}/app/{key}?protocol=P&client=bench&version=1.0`.
pub fn url(ws_base: &str, key: &str, family: Family) -> String {
    format!(
        "{}/app/{key}?protocol={}&client=bench&version=1.0",
        ws_base.trim_end_matches('/'),
        family.protocol()
    )
}

#[derive(Deserialize)]
struct Frame {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// Frame `data`, decoded when it is a JSON string holding JSON.
fn data_of(frame: Frame) -> Value {
    match frame.data {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
        None => Value::Null,
    }
}

/// Parse a text frame into (event, channel, decoded data).
pub fn parse(text: &str) -> Option<(String, Option<String>, Value)> {
    let f: Frame = serde_json::from_str(text).ok()?;
    let event = f.event.clone();
    let channel = f.channel.clone();
    Some((event, channel, data_of(f)))
}

/// Connect and wait for `connection_established`; returns the socket and its `socket_id`.
pub async fn connect(url: &str, family: Family) -> Result<(Ws, String), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let event = format!("{}connection_established", family.prefix());
    let data = wait_for(&mut ws, family, &event, None).await?;
    let socket_id = data
        .get("socket_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((ws, socket_id))
}

/// The subscribe frame for `channel` (with `auth` for private channels).
pub fn subscribe_frame(family: Family, channel: &str, auth: Option<&str>) -> String {
    let mut data = serde_json::json!({ "channel": channel });
    if let Some(a) = auth {
        data["auth"] = Value::String(a.to_string());
    }
    serde_json::json!({ "event": format!("{}subscribe", family.prefix()), "data": data })
        .to_string()
}

/// Subscribe and wait for `subscription_succeeded`; returns its decoded data.
pub async fn subscribe(
    ws: &mut Ws,
    family: Family,
    channel: &str,
    auth: Option<&str>,
) -> Result<Value, String> {
    ws.send(Message::text(subscribe_frame(family, channel, auth)))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    let event = format!("{}subscription_succeeded", family.internal());
    wait_for(ws, family, &event, Some(channel)).await
}

/// Read frames until `event` (on `channel`, if given) and return its decoded data; errors,
/// subscription errors and closes are errors; pings are answered; other frames are skipped.
pub async fn wait_for(
    ws: &mut Ws,
    family: Family,
    event: &str,
    channel: Option<&str>,
) -> Result<Value, String> {
    let error = format!("{}error", family.prefix());
    let sub_error = format!("{}subscription_error", family.prefix());
    let ping = format!("{}ping", family.prefix());
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let Some((ev, ch, data)) = parse(&text) else {
                    continue;
                };
                if ev == event && (channel.is_none() || ch.as_deref() == channel) {
                    return Ok(data);
                }
                if ev == error || ev == sub_error {
                    return Err(format!("{ev} while waiting for {event}: {data}"));
                }
                if ev == ping {
                    ws.send(Message::text(family.pong()))
                        .await
                        .map_err(|e| format!("send pong: {e}"))?;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(format!("closed with code {code} while waiting for {event}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read error while waiting for {event}: {e}")),
            None => return Err(format!("connection ended while waiting for {event}")),
        }
    }
}

/// The unsigned integer after `"key":` in `text` (top-level or escaped), if any.
pub fn u64_after(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let start = text.find(&pat)? + pat.len();
    let digits: String = text[start..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_double_encoded_data() {
        let t = r#"{"event":"sockudo_internal:subscription_succeeded","channel":"c","data":"{\"stream_id\":\"s\",\"serial\":4}"}"#;
        let (e, c, d) = parse(t).unwrap();
        assert_eq!(e, "sockudo_internal:subscription_succeeded");
        assert_eq!(c.as_deref(), Some("c"));
        assert_eq!(d["serial"], 4);
        assert_eq!(u64_after(t, "serial"), None); // escaped inside data, not top level
        let f = r#"{"event":"bench","channel":"c","data":"x","message_id":"m","serial":17,"stream_id":"s"}"#;
        assert_eq!(u64_after(f, "serial"), Some(17));
    }
}
