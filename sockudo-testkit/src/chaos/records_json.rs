//! [`ChaosRecords::to_json`]: the raw observations as one JSON document, for CI artifacts
//! and for digging into a failed run with other tools (times in seconds from the start).

use serde_json::{json, Value};

use crate::chaos::records::{
    ChaosRecords, Delivery, KillRecord, PresenceCheck, PublishRecord, ResumeOutcome,
    SubscriberRecord,
};

impl ChaosRecords {
    /// Everything recorded, as JSON: `seed`, `nodes`, `duration`, `publishes`, `subscribers`
    /// (with `deliveries` as `[channel, message_id, serial, stream_id, at]` rows), `kills`,
    /// `presence_members`, `presence_checks`.
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "nodes": self.nodes,
            "duration": self.duration.as_secs_f64(),
            "publishes": self.publishes.iter().map(publish).collect::<Vec<_>>(),
            "subscribers": self.subscribers.iter().map(subscriber).collect::<Vec<_>>(),
            "kills": self.kills.iter().map(kill).collect::<Vec<_>>(),
            "presence_members": self.presence_members.iter().map(|m| json!({
                "user_id": m.user_id,
                "joins": m.joins,
                "connected_at_end": m.connected_at_end,
            })).collect::<Vec<_>>(),
            "presence_checks": self.presence_checks.iter().map(presence_check).collect::<Vec<_>>(),
        })
    }
}

fn publish(p: &PublishRecord) -> Value {
    json!({
        "message_id": p.message_id,
        "channel": p.channel,
        "sent_at": p.sent_at.as_secs_f64(),
        "acked_at": p.acked_at.map(|d| d.as_secs_f64()),
        "attempts": p.attempts,
        "serial": p.serial,
        "errors": p.errors,
    })
}

fn subscriber(s: &SubscriberRecord) -> Value {
    json!({
        "index": s.index,
        "channels": s.channels,
        "deliveries": s.deliveries.iter().map(delivery).collect::<Vec<_>>(),
        "resumes": s.resumes.iter().map(|r| {
            let (ok, detail) = match &r.outcome {
                ResumeOutcome::Recovered { source, replayed } => {
                    (true, json!({ "source": source, "replayed": replayed }))
                }
                ResumeOutcome::Failed { code, reason } => {
                    (false, json!({ "code": code, "reason": reason }))
                }
            };
            json!({ "channel": r.channel, "at": r.at.as_secs_f64(), "ok": ok, "detail": detail })
        }).collect::<Vec<_>>(),
        "unresumed_resubscribes": s.unresumed_resubscribes,
        "subscription_failures": s.subscription_failures,
        "connection_changes": s.connection_changes.iter()
            .map(|(at, up)| json!([at.as_secs_f64(), up]))
            .collect::<Vec<_>>(),
        "stats": {
            "reconnects": s.stats.reconnects,
            "duplicates_dropped": s.stats.duplicates_dropped,
            "slow_consumer_drops": s.stats.slow_consumer_drops,
        },
    })
}

fn delivery(d: &Delivery) -> Value {
    json!([
        d.channel,
        d.message_id,
        d.serial,
        d.stream_id,
        d.at.as_secs_f64()
    ])
}

fn kill(k: &KillRecord) -> Value {
    json!({
        "node": k.node,
        "node_id": k.node_id,
        "restarted_as": k.restarted_as,
        "killed_at": k.killed_at.as_secs_f64(),
        "restarted_at": k.restarted_at.map(|d| d.as_secs_f64()),
        "restart_error": k.restart_error,
    })
}

fn presence_check(c: &PresenceCheck) -> Value {
    json!({
        "node": c.node,
        "listed": c.listed,
        "expected": c.expected,
        "error": c.error,
    })
}
