//! Repairing a live gap on a node: wait a moment for the missing broadcasts (they are
//! usually only late), then fetch them from the history store; if the store cannot supply
//! them, give the gap up in the open (see [`crate::sequencer`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sockudo_core::history::HistoryStore;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::namespace::{Namespace, Positioned};
use crate::node::Node;
use crate::sequencer::Gap;

/// Most messages fetched from the store per repair step.
const PAGE: usize = 1000;

/// Run after a channel's sequence opened a gap; ends when no gap is left.
pub async fn repair(node: Arc<Node>, ns: Arc<Namespace>, channel: Arc<str>) {
    metrics::counter!(crate::metrics::LIVE_GAPS, "outcome" => "detected").increment(1);
    tokio::time::sleep(Duration::from_millis(node.settings.live_gap_wait_ms)).await;
    while let Some((stream_id, gap)) = ns.open_gap(&channel) {
        let fetched = match &node.history {
            Some(h) => fetch(&**h, &node, &ns.app_id, &channel, &stream_id, gap).await,
            None => None,
        };
        let progress = fetched.is_some_and(|list| {
            ns.repair_gap(&channel, &stream_id, list);
            ns.open_gap(&channel)
                .is_none_or(|(sid, next)| sid != stream_id || next.from > gap.from)
        });
        if progress {
            metrics::counter!(crate::metrics::LIVE_GAPS, "outcome" => "repaired").increment(1);
            tracing::debug!(app_id = %ns.app_id, channel = %channel, from = gap.from, to = gap.to, "live gap repaired from history");
            continue;
        }
        if let Some(gap) = ns.give_up_gap(&channel) {
            metrics::counter!(crate::metrics::LIVE_GAPS, "outcome" => "failed_closed").increment(1);
            tracing::warn!(app_id = %ns.app_id, channel = %channel, from = gap.from, to = gap.to, "live gap could not be repaired; V2 subscribers were told (resume_failed)");
        }
    }
}

/// The gap's messages from the store, as the sequence takes them; `None` when the store
/// failed or is on another stream.
async fn fetch(
    history: &dyn HistoryStore,
    node: &Node,
    app_id: &str,
    channel: &str,
    stream_id: &Arc<str>,
    gap: Gap,
) -> Option<Vec<Positioned>> {
    let want = usize::try_from(gap.to - gap.from + 1).map_or(PAGE, |n| n.min(PAGE));
    let page = match history
        .read_after(app_id, channel, gap.from - 1, want)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(channel, error = %e, "history unavailable while repairing a live gap");
            return None;
        }
    };
    if *page.stream_id != **stream_id {
        return None;
    }
    let expose = node.settings.v1_expose_stream_fields;
    let list = page
        .messages
        .into_iter()
        .filter(|m| m.serial >= gap.from && m.serial <= gap.to)
        .filter_map(|m| {
            let v2 = Utf8Bytes::try_from(m.frame).ok()?;
            let v1 = if expose { v2.clone() } else { v1_of(&v2)? };
            Some(Positioned {
                v1,
                v2,
                serial: m.serial,
                stream_id: Arc::clone(stream_id),
                except: None,
            })
        })
        .collect();
    Some(list)
}

/// The protocol 7 form of a stored V2 broadcast: the same event without the stream fields
/// (only for repaired messages; live ones carry both forms from the publisher).
fn v1_of(v2: &str) -> Option<Utf8Bytes> {
    let mut obj: Map<String, Value> = serde_json::from_str(v2).ok()?;
    for field in ["message_id", "serial", "stream_id", "extras"] {
        obj.remove(field);
    }
    Some(Value::Object(obj).to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_form_drops_only_stream_fields() {
        let v2 = r#"{"event":"e","channel":"c","data":"{\"a\":1}","message_id":"m","serial":3,"stream_id":"s"}"#;
        let v1: Value = serde_json::from_str(&v1_of(v2).unwrap()).unwrap();
        assert_eq!(
            v1,
            serde_json::json!({"event":"e","channel":"c","data":"{\"a\":1}"})
        );
    }
}
