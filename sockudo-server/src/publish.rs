//! The one publish path shared by the HTTP API and client events: remember the last event of
//! cache channels, then hand the frame to the adapter.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sockudo_core::adapter::{AdapterError, Broadcast};
use sockudo_core::cache::CacheError;
use sockudo_core::channel::ChannelName;

use crate::node::Node;

/// Why a publish did not reach the adapter.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("cache channel store failed: {0}")]
    Cache(#[from] CacheError),
}

/// Cache key of a cache channel's last event.
pub fn cache_channel_key(app_id: &str, channel: &str) -> String {
    format!("sockudo:cache_channel:{app_id}:{channel}")
}

/// Publish an already-encoded frame to `channel`.
pub async fn publish_frame(node: &Node, app_id: &str, channel: &ChannelName<'_>, frame: Bytes, except_socket: Option<Arc<str>>) -> Result<(), PublishError> {
    if channel.is_cache() {
        node.cache.set(&cache_channel_key(app_id, channel.as_str()), encode_cached(&frame), Some(node.cache_ttl())).await?;
    }
    node.adapter
        .publish(Broadcast { app_id: Arc::from(app_id), channel: Arc::from(channel.as_str()), frame, except_socket })
        .await?;
    Ok(())
}

/// Cache-channel entries hold the store time (for the `cache` channel attribute's `ttl`) and
/// the frame: `"{unix_ms}\n{frame}"`.
pub fn encode_cached(frame: &[u8]) -> Bytes {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
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
