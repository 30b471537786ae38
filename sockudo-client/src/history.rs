//! V2 backfill: `sockudo:channel_history` requests and pages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to fetch. `until_attach` asks for the events up to the point this connection
/// attached, which is how a channel whose resume failed fills its gap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryQuery {
    /// Most items in the page (server default 100, at most 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `"backwards"` or `"forwards"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Where the previous page ended (`HistoryPage::next_cursor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// First serial wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_serial: Option<u64>,
    /// Last serial wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_serial: Option<u64>,
    /// Stop at the position this client attached at (backfill up to live).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub until_attach: bool,
}

impl HistoryQuery {
    /// Everything up to this connection's attach point.
    pub fn until_attach() -> Self {
        HistoryQuery {
            until_attach: true,
            ..Self::default()
        }
    }

    /// Ask for at most `limit` items.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continue after `cursor`.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// The request `data` for `channel`.
    pub(crate) fn to_data(&self, channel: &str) -> String {
        let mut v =
            serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Default::default()));
        if let Value::Object(map) = &mut v {
            map.insert("channel".into(), Value::String(channel.to_owned()));
        }
        v.to_string()
    }
}

/// One page of history.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HistoryPage {
    /// The stored messages, as the server sent them.
    #[serde(default)]
    pub items: Vec<Value>,
    /// Whether more pages follow.
    #[serde(default)]
    pub has_more: bool,
    /// The cursor of the next page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// The serial range the store holds, as the server reported it.
    #[serde(default)]
    pub bounds: Option<Value>,
    /// The server's statement about gaps in this page.
    #[serde(default)]
    pub continuity: Option<Value>,
    /// The channel's stream id and head.
    #[serde(default)]
    pub stream_state: Option<Value>,
}

/// Event name (without family prefix) of history requests and answers.
pub(crate) const CHANNEL_HISTORY: &str = "channel_history";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shape() {
        let d: Value =
            serde_json::from_str(&HistoryQuery::until_attach().limit(50).to_data("c")).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"channel":"c","limit":50,"until_attach":true})
        );
        let d: Value = serde_json::from_str(&HistoryQuery::default().to_data("c")).unwrap();
        assert_eq!(d, serde_json::json!({"channel":"c"}));
    }
}
