//! Protocol V2 on a connection: stream fields on subscribe, `sockudo:resume` and
//! `sockudo:channel_history`.
//!
//! Resume fails closed. For each channel the connection is subscribed to, its live frames are
//! held from the moment the request is handled; the pure decision in
//! `sockudo_core::history::recovery` says whether every serial after the client's position
//! is provably available (hot ring first, then the history store); only then is the range
//! replayed, checked for contiguity, and followed by the held frames in serial order.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sockudo_core::history::recovery::{
    self, ClientPosition, Decision, FailureCode, Tier, TierView,
};
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::OutboundFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::connection::Connection;
use crate::namespace::Namespace;
use crate::node::Node;

/// Largest page a history read or replay step asks the store for.
const PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ResumeData {
    pub channel_positions: HashMap<String, PositionData>,
}

#[derive(Debug, Deserialize)]
pub struct PositionData {
    pub serial: u64,
    /// Missing when the client never saw one (some clients leave out null fields): that
    /// channel then fails closed, the rest of the resume goes on.
    #[serde(default)]
    pub stream_id: Option<String>,
    #[serde(default)]
    pub last_message_id: Option<String>,
}

/// What the session writes, in order, after planning a resume.
#[derive(Debug, Default)]
pub struct ResumePlan {
    pub channels: Vec<ChannelPlan>,
    pub success: Option<String>,
}

#[derive(Debug)]
pub enum ChannelPlan {
    /// Write `replay`, then the held frames of `channel` after `continue_after` (all of them
    /// from `stream_id`).
    Recovered {
        channel: Arc<str>,
        stream_id: String,
        replay: Vec<Utf8Bytes>,
        continue_after: u64,
    },
    /// Release held frames as they are, then write `failed`.
    Failed { channel: Arc<str>, failed: String },
}

/// Stream fields added to `subscription_succeeded` on V2 connections.
pub async fn subscribe_fields(node: &Node, app_id: &str, channel: &str) -> Option<(String, u64)> {
    let history = node.history.as_ref()?;
    match history.head(app_id, channel).await {
        Ok(head) => Some((head.stream_id, head.serial)),
        Err(e) => {
            tracing::warn!(error = %e, channel, "history head unavailable at subscribe");
            None
        }
    }
}

/// Add `stream_id`, `serial` and `attach_serial` to a subscription_succeeded data object.
pub fn with_stream_fields(data: &str, position: &(String, u64)) -> String {
    let mut obj = serde_json::from_str::<Map<String, Value>>(data).unwrap_or_default();
    obj.insert("stream_id".into(), position.0.clone().into());
    obj.insert("serial".into(), position.1.into());
    obj.insert("attach_serial".into(), position.1.into());
    Value::Object(obj).to_string()
}

fn failed_frame(
    channel: &str,
    client: &ClientPosition,
    code: FailureCode,
    reason: &str,
    current: Option<&str>,
    oldest: Option<u64>,
    newest: Option<u64>,
) -> (Value, String) {
    let data = json!({
        "channel": channel,
        "code": code.as_str(),
        "reason": reason,
        "expected_stream_id": client.stream_id,
        "current_stream_id": current,
        "oldest_available_serial": oldest,
        "newest_available_serial": newest,
    });
    let frame = OutboundFrame::system(
        Family::Sockudo,
        "resume_failed",
        Some(channel),
        &data.to_string(),
    );
    (data, frame)
}

/// `resume_failed` (`continuity_unverifiable`) for a channel that cannot even be looked at:
/// its data object and the frame.
pub fn unresumable(channel: &str, client: &ClientPosition, reason: &str) -> (Value, String) {
    metrics::counter!(crate::metrics::RECOVERY, "outcome" => "failure", "source" => "", "code" => FailureCode::ContinuityUnverifiable.as_str()).increment(1);
    failed_frame(
        channel,
        client,
        FailureCode::ContinuityUnverifiable,
        reason,
        None,
        None,
        None,
    )
}

/// The client's position as the recovery logic sees it.
pub fn client_position(pos: &PositionData) -> ClientPosition {
    ClientPosition {
        stream_id: pos.stream_id.clone().unwrap_or_default(),
        serial: pos.serial,
        last_message_id: pos.last_message_id.clone(),
    }
}

/// Plan a resume: hold every named channel, decide, and fetch the replay.
pub async fn plan_resume(
    node: &Node,
    conn: &Connection,
    ns: &Namespace,
    subscribed: &(dyn Fn(&str) -> Option<Arc<str>> + Sync),
    mut positions: Vec<(String, PositionData)>,
) -> ResumePlan {
    let app_id = conn.app.id.clone();
    let mut plan = ResumePlan::default();
    let mut recovered = Vec::new();
    let mut failed = Vec::new();
    // What one resume may replay in all, over its channels (a client far behind on many
    // channels must not make the node build an unbounded replay in memory).
    let mut budget = node.settings.resume_max_replay_bytes;
    positions.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, pos) in positions {
        let no_stream = pos.stream_id.is_none();
        let client = ClientPosition {
            stream_id: pos.stream_id.unwrap_or_default(),
            serial: pos.serial,
            last_message_id: pos.last_message_id,
        };
        if no_stream {
            let (d, f) = unresumable(&name, &client, "the position has no stream_id");
            failed.push(d);
            plan.channels.push(ChannelPlan::Failed {
                channel: Arc::from(name.as_str()),
                failed: f,
            });
            continue;
        }
        let Some(channel) = subscribed(&name) else {
            metrics::counter!(crate::metrics::RECOVERY, "outcome" => "failure", "source" => "", "code" => FailureCode::ContinuityUnverifiable.as_str()).increment(1);
            let (d, f) = failed_frame(
                &name,
                &client,
                FailureCode::ContinuityUnverifiable,
                "not subscribed to the channel",
                None,
                None,
                None,
            );
            failed.push(d);
            plan.channels.push(ChannelPlan::Failed {
                channel: Arc::from(name.as_str()),
                failed: f,
            });
            continue;
        };
        // Hold first: anything published from here on waits behind the replay.
        let live = conn.hold(&channel);
        let outcome = resume_channel(node, ns, &app_id, &channel, &client, live.map(|l| l.first))
            .await
            .and_then(|ok| within_budget(ok, &mut budget, node.settings.resume_max_replay_bytes));
        match outcome {
            Ok((source, replay, upto)) => {
                let last_message_id = replay_last_id(&replay);
                let continue_after = live.map_or(upto, |l| l.last.max(upto));
                recovered.push(json!({
                    "channel": &*channel,
                    "source": source.as_str(),
                    "replayed": replay.len(),
                    // A success proves the client's stream is current.
                    "position": { "stream_id": client.stream_id, "serial": continue_after, "last_message_id": last_message_id.or(client.last_message_id.clone()) },
                }));
                metrics::counter!(crate::metrics::RECOVERY, "outcome" => "success", "source" => source.as_str(), "code" => "").increment(1);
                plan.channels.push(ChannelPlan::Recovered {
                    channel,
                    stream_id: client.stream_id.clone(),
                    replay,
                    continue_after,
                });
            }
            Err((code, reason, current, oldest, newest)) => {
                metrics::counter!(crate::metrics::RECOVERY, "outcome" => "failure", "source" => "", "code" => code.as_str()).increment(1);
                tracing::debug!(app_id = %app_id, socket_id = %conn.socket_id, channel = %channel, code = code.as_str(), %reason, "resume failed");
                let (d, f) = failed_frame(
                    &channel,
                    &client,
                    code,
                    &reason,
                    current.as_deref(),
                    oldest,
                    newest,
                );
                failed.push(d);
                plan.channels
                    .push(ChannelPlan::Failed { channel, failed: f });
            }
        }
    }
    let data = json!({ "recovered": recovered, "failed": failed });
    plan.success = Some(OutboundFrame::system(
        Family::Sockudo,
        "resume_success",
        None,
        &data.to_string(),
    ));
    plan
}

/// A recovered channel's replay, charged to the resume's byte budget; over it, the channel
/// fails like an expired position (the client must start over from the current state).
fn within_budget(
    ok: (Tier, Vec<Utf8Bytes>, u64),
    budget: &mut usize,
    limit: usize,
) -> Result<(Tier, Vec<Utf8Bytes>, u64), Failure> {
    let bytes: usize = ok.1.iter().map(|f| f.len()).sum();
    if bytes > *budget {
        metrics::counter!(crate::metrics::LIMIT_REJECTIONS, "limit" => "resume_replay_bytes")
            .increment(1);
        return Err((
            FailureCode::PositionExpired,
            format!(
                "the replay would exceed this node's limit of {limit} bytes per resume \
                 (RESUME_MAX_REPLAY_BYTES)"
            ),
            None,
            None,
            None,
        ));
    }
    *budget -= bytes;
    Ok(ok)
}

fn replay_last_id(replay: &[Utf8Bytes]) -> Option<String> {
    let last = replay.last()?;
    serde_json::from_str::<Value>(last)
        .ok()?
        .get("message_id")?
        .as_str()
        .map(str::to_owned)
}

type Failure = (
    FailureCode,
    String,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

async fn resume_channel(
    node: &Node,
    ns: &Namespace,
    app_id: &str,
    channel: &str,
    client: &ClientPosition,
    first_live: Option<u64>,
) -> Result<(Tier, Vec<Utf8Bytes>, u64), Failure> {
    let hot = ns.hot.view(channel);
    // The store is the authority on the current stream; read what the client misses (one
    // page also tells the stream id, head and oldest retained serial).
    let cold_page = match &node.history {
        Some(h) => match h.read_after(app_id, channel, client.serial, PAGE).await {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                tracing::warn!(error = %e, channel, "history unavailable during resume");
                Err(())
            }
        },
        None => Ok(None),
    };
    let cold_view = match &cold_page {
        Ok(Some(p)) => Ok(Some(TierView {
            stream_id: p.stream_id.clone(),
            head: p.newest_serial,
            oldest: p.oldest_serial,
        })),
        Ok(None) => Ok(None),
        Err(()) => Err(()),
    };
    let head = match (&cold_view, &hot) {
        (Ok(Some(c)), _) => c.head,
        (_, Some(h)) => h.head,
        _ => client.serial,
    };
    // A client that reconnected resumes up to the first live frame this connection sent
    // it (those follow the replay). A client already past that point asks mid-connection
    // (it saw a gap): it gets everything after its position; what it has is dropped by
    // serial on its side and by `release_after` here.
    let upto = match first_live {
        Some(f) if client.serial.saturating_add(1) < f => f.saturating_sub(1).min(head),
        _ => head,
    };
    let decision = recovery::decide(
        client,
        hot.as_ref(),
        cold_view.as_ref().map(Option::as_ref).map_err(|_| ()),
        upto,
    );
    match decision {
        Decision::Fail {
            code,
            reason,
            current_stream_id,
            oldest_available_serial,
            newest_available_serial,
            ..
        } => Err((
            code,
            reason,
            current_stream_id,
            oldest_available_serial,
            newest_available_serial,
        )),
        Decision::Recover {
            source,
            after,
            upto,
        } => {
            let frames: Vec<(u64, Utf8Bytes)> = match source {
                Tier::Hot => ns
                    .hot
                    .range(channel, &client.stream_id, after, upto)
                    .unwrap_or_default(),
                Tier::Cold => {
                    let mut out = Vec::new();
                    let mut page = match cold_page {
                        Ok(Some(p)) => p,
                        _ => {
                            return Err((
                                FailureCode::PersistenceUnavailable,
                                "history store unavailable".into(),
                                None,
                                None,
                                None,
                            ))
                        }
                    };
                    loop {
                        let mut last = after;
                        for m in page
                            .messages
                            .into_iter()
                            .filter(|m| m.serial > after && m.serial <= upto)
                        {
                            last = m.serial;
                            match Utf8Bytes::try_from(m.frame) {
                                Ok(f) => out.push((m.serial, f)),
                                Err(_) => {
                                    return Err((
                                        FailureCode::ContinuityUnverifiable,
                                        "corrupt stored frame".into(),
                                        None,
                                        None,
                                        None,
                                    ))
                                }
                            }
                        }
                        if last >= upto || out.len() as u64 >= upto - after {
                            break;
                        }
                        let Some(h) = &node.history else { break };
                        page = match h.read_after(app_id, channel, last, PAGE).await {
                            Ok(p) if p.stream_id == client.stream_id && !p.messages.is_empty() => p,
                            Ok(_) => {
                                return Err((
                                    FailureCode::ContinuityUnverifiable,
                                    "stream changed during replay".into(),
                                    None,
                                    None,
                                    None,
                                ))
                            }
                            Err(_) => {
                                return Err((
                                    FailureCode::PersistenceUnavailable,
                                    "history store unavailable during replay".into(),
                                    None,
                                    None,
                                    None,
                                ))
                            }
                        };
                    }
                    out
                }
            };
            let serials: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
            if let Err(code) = recovery::verify_replay(after, upto, &serials) {
                return Err((code, "replay was not contiguous".into(), None, None, None));
            }
            Ok((source, frames.into_iter().map(|(_, f)| f).collect(), upto))
        }
    }
}

/// `sockudo:channel_history` request.
#[derive(Debug, Deserialize)]
pub struct HistoryRequest {
    pub channel: String,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub start_serial: Option<u64>,
    #[serde(default)]
    pub end_serial: Option<u64>,
    #[serde(default)]
    pub until_attach: Option<bool>,
}

/// Answer a history request with the reply frame (or an error message).
pub async fn channel_history(
    node: &Node,
    app_id: &str,
    req: &HistoryRequest,
    attach_serial: Option<u64>,
) -> Result<String, String> {
    let Some(history) = &node.history else {
        return Err("history is not enabled on this server".into());
    };
    let limit = req.limit.unwrap_or(100);
    if limit == 0 || limit > PAGE {
        return Err(format!("limit must be 1 to {PAGE}"));
    }
    let forward = match req.direction.as_deref() {
        None | Some("backward") => false,
        Some("forward") => true,
        Some(other) => return Err(format!("unknown direction {other:?}")),
    };
    let cursor = match req.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| "invalid cursor".to_string())?),
    };
    let mut end = req.end_serial;
    if req.until_attach.unwrap_or(false) {
        let Some(a) = attach_serial else {
            return Err("until_attach needs a subscription with a stream position".into());
        };
        end = Some(end.map_or(a, |e| e.min(a)));
    }
    let start = req.start_serial.unwrap_or(0);
    let page = if forward {
        let after = cursor
            .unwrap_or(start.saturating_sub(1))
            .max(start.saturating_sub(1));
        history
            .read_after(app_id, &req.channel, after, limit + 1)
            .await
    } else {
        let before = match (cursor, end) {
            // Peer-supplied: `end_serial` may be u64::MAX.
            (Some(c), Some(e)) => Some(c.min(e.saturating_add(1))),
            (Some(c), None) => Some(c),
            (None, Some(e)) => Some(e.saturating_add(1)),
            (None, None) => None,
        };
        history
            .read_before(app_id, &req.channel, before, limit + 1)
            .await
    }
    .map_err(|e| format!("history unavailable: {e}"))?;
    let mut msgs: Vec<_> = page
        .messages
        .into_iter()
        .filter(|m| m.serial >= start && end.is_none_or(|e| m.serial <= e))
        .collect();
    let has_more = msgs.len() > limit;
    msgs.truncate(limit);
    let serials: Vec<u64> = msgs.iter().map(|m| m.serial).collect();
    let contiguous = serials.windows(2).all(|w| {
        if forward {
            Some(w[1]) == w[0].checked_add(1)
        } else {
            Some(w[0]) == w[1].checked_add(1)
        }
    });
    // Either direction continues from the last serial returned (exclusive).
    let next_cursor = if has_more {
        msgs.last().map(|m| m.serial.to_string())
    } else {
        None
    };
    let items: Vec<Value> = msgs
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.frame).unwrap_or(Value::Null))
        .collect();
    let data = json!({
        "channel": req.channel,
        "items": items,
        "has_more": has_more,
        "next_cursor": next_cursor,
        "bounds": { "oldest_serial": page.oldest_serial, "newest_serial": page.newest_serial },
        "continuity": if contiguous { "continuous" } else { "gap" },
        "stream_state": { "stream_id": page.stream_id, "serial": page.newest_serial },
    });
    Ok(OutboundFrame::system(
        Family::Sockudo,
        "channel_history",
        Some(&req.channel),
        &data.to_string(),
    ))
}
