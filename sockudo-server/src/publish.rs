//! The one publish path shared by the HTTP API and client events: V2 identity and serial,
//! one encoding per wire variant, the cache-channel store, then the adapter.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use sockudo_core::adapter::{AdapterError, Broadcast};
use sockudo_core::cache::CacheError;
use sockudo_core::channel::ChannelName;
use sockudo_core::history::HistoryError;
use sockudo_core::protocol::{MessageMeta, OutboundFrame};

use crate::node::Node;

/// Why a publish did not reach the adapter.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The adapter refused the broadcast.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The cache-channel store failed.
    #[error("cache channel store failed: {0}")]
    Cache(#[from] CacheError),
    /// The history store failed.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Cache key of a cache channel's last event.
pub fn cache_channel_key(app_id: &str, channel: &str) -> String {
    format!("sockudo:cache_channel:{app_id}:{channel}")
}

/// One event to publish on one channel.
#[derive(Debug, Clone, Copy)]
pub struct EventToPublish<'a> {
    /// The event name.
    pub event: &'a str,
    /// The `data` field as it goes on the wire.
    pub data: &'a RawValue,
    /// Presence client events carry the sender's user id.
    pub user_id: Option<&'a str>,
    /// The publisher's message id (V2 dedup identity); generated when absent.
    pub message_id: Option<&'a str>,
    /// V2 publisher metadata.
    pub extras: Option<&'a RawValue>,
    /// A connection that must not receive it.
    pub except_socket: Option<&'a Arc<str>>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's identity.
    pub message_id: Arc<str>,
    /// Position in the channel's stream (with history).
    pub serial: Option<u64>,
    /// The stream `serial` belongs to.
    pub stream_id: Option<Arc<str>>,
    /// The message id was already published in this channel within the dedup window: the
    /// original serial is returned, and the broadcast was repeated for nodes that may have
    /// missed it (each node delivers a message id once).
    pub duplicate: bool,
}

/// Longest message id accepted from a publisher.
pub const MAX_MESSAGE_ID_LEN: usize = 128;

/// The message id a publish with an idempotency key and no message id takes: a repeat of it
/// (a retry after a crash, a batch item published again) is then one message everywhere.
pub fn keyed_message_id(key: &str) -> String {
    format!("idem:{key}")
}

/// A fresh message id: 128 random bits, hex.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Publish an event: assign its V2 identity (and serial, with history), encode it once per
/// wire variant, remember it for cache channels, and hand it to the adapter.
pub async fn publish_event(
    node: &Node,
    app_id: &str,
    channel: &ChannelName<'_>,
    ev: EventToPublish<'_>,
) -> Result<Published, PublishError> {
    let generated;
    let message_id = match ev.message_id {
        Some(m) => m,
        None => {
            generated = new_message_id();
            &generated
        }
    };
    let encode_v2 = |position: Option<(&str, u64)>| {
        OutboundFrame::event_v2(
            ev.event,
            channel.as_str(),
            ev.data,
            ev.user_id,
            MessageMeta {
                message_id,
                position,
                extras: ev.extras,
            },
        )
    };
    let mut duplicate = false;
    let (v2, serial, stream_id) = match &node.history {
        Some(history) => {
            // The frame the store asked for last, with the position it was built for.
            let built = parking_lot::Mutex::new(None::<(String, u64, Bytes)>);
            let frame_for = |stream_id: &str, serial: u64| {
                let f = encode_v2(Some((stream_id, serial)));
                *built.lock() = Some((stream_id.to_owned(), serial, f.clone()));
                f
            };
            let window = Duration::from_secs(node.settings.message_dedup_secs);
            let (appended, recovered) = match history
                .append(app_id, channel.as_str(), message_id, window, &frame_for)
                .await
            {
                Ok(a) => (a, false),
                // A timed-out append may still have committed. Ask again under the same
                // message id: the store's dedup answers "already appended" with the original
                // serial if it did, and that message was never broadcast, so it must go out
                // now (a stored-but-unsent message would be a silent gap for live clients).
                Err(HistoryError::Unavailable(first)) => {
                    tracing::warn!(channel = %channel, error = %first, "history append failed; retrying under the same message id");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    (
                        history
                            .append(app_id, channel.as_str(), message_id, window, &frame_for)
                            .await?,
                        true,
                    )
                }
                Err(e) => return Err(e.into()),
            };
            // A duplicate (a retry of a message id already in the stream) is broadcast again
            // all the same: the first attempt may have died between the append and the
            // broker, and a 2xx must mean every node gets it. Nodes that have it drop the
            // copy (message id and serial), so the second broadcast costs nothing there.
            duplicate = appended.duplicate && !recovered;
            let frame = match built.into_inner() {
                Some((sid, serial, f))
                    if sid == appended.stream_id && serial == appended.serial =>
                {
                    f
                }
                _ => encode_v2(Some((&appended.stream_id, appended.serial))),
            };
            (
                frame,
                Some(appended.serial),
                Some(Arc::<str>::from(appended.stream_id)),
            )
        }
        None => (encode_v2(None), None, None),
    };
    let v1 = if node.settings.v1_expose_stream_fields {
        v2.clone()
    } else {
        OutboundFrame::event(ev.event, channel.as_str(), ev.data, ev.user_id)
    };
    if channel.is_cache() {
        node.cache
            .set(
                &cache_channel_key(app_id, channel.as_str()),
                encode_cached(&v1),
                Some(node.cache_ttl()),
            )
            .await?;
    }
    let message_id: Arc<str> = Arc::from(message_id);
    node.adapter
        .publish(Broadcast {
            app_id: Arc::from(app_id),
            channel: Arc::from(channel.as_str()),
            frame: v1,
            frame_v2: Some(v2),
            message_id: Some(Arc::clone(&message_id)),
            serial,
            stream_id: stream_id.clone(),
            except_socket: ev.except_socket.cloned(),
            member: None,
        })
        .await?;
    Ok(Published {
        message_id,
        serial,
        stream_id,
        duplicate,
    })
}

/// Cache-channel entries hold the store time (for the `cache` channel attribute's `ttl`) and
/// the frame: `"{unix_ms}\n{frame}"`.
pub fn encode_cached(frame: &[u8]) -> Bytes {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = Vec::with_capacity(frame.len() + 21);
    out.extend_from_slice(now_ms.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(frame);
    Bytes::from(out)
}

/// Split a cache-channel entry into (stored unix ms, frame).
pub fn decode_cached(entry: &[u8]) -> Option<(u64, &[u8])> {
    let nl = entry.iter().position(|&b| b == b'\n')?;
    let ms = std::str::from_utf8(&entry[..nl]).ok()?.parse().ok()?;
    Some((ms, &entry[nl + 1..]))
}
