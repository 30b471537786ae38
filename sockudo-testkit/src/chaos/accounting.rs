//! From [`ChaosRecords`] to [`ChaosReport`]: who owed what to whom, what was lost,
//! duplicated, out of order, and whether presence converged. Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::chaos::records::{
    ChaosRecords, PresenceCheck, PublishRecord, ResumeOutcome, SubscriberRecord,
};
use crate::chaos::report::{ChaosReport, PresenceDivergence, MAX_PROBLEMS};

/// A loss counts as "while connected" when the subscriber's connection did not drop between
/// the publish and this long after its acknowledgement (a frame in flight on a dying
/// connection is the resume's job, not the live path's).
const CONNECTED_GRACE: Duration = Duration::from_secs(2);

impl ChaosReport {
    /// Compute the report of `records` (see the field docs for each definition).
    pub fn from_records(records: &ChaosRecords) -> ChaosReport {
        let mut report = ChaosReport {
            seed: records.seed,
            nodes: records.nodes,
            subscribers: records.subscribers.len(),
            presence_members: records.presence_members.len(),
            duration: records.duration,
            kills: records.kills.len(),
            restart_failures: records
                .kills
                .iter()
                .filter(|k| k.restarted_at.is_none())
                .count(),
            presence_joins: records.presence_members.iter().map(|m| m.joins).sum(),
            ..ChaosReport::default()
        };
        let delivered: HashSet<&str> = records
            .subscribers
            .iter()
            .flat_map(|s| s.deliveries.iter().map(|d| d.message_id.as_str()))
            .collect();
        count_publishes(&mut report, &records.publishes, &delivered);
        let acked = acknowledged_by_channel(&records.publishes);
        let published: HashSet<&str> = records
            .publishes
            .iter()
            .map(|p| p.message_id.as_str())
            .collect();
        for subscriber in &records.subscribers {
            count_subscriber(&mut report, subscriber, &acked, &published);
        }
        count_presence(&mut report, &records.presence_checks);
        report
    }

    fn problem(&mut self, line: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(line);
        }
    }
}

/// Failed attempts, consecutive repeats of the same error folded (`… ×n`).
fn summarize(errors: &[String]) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for e in errors {
        // Ignore the time stamp when comparing.
        let what = e.split_once(' ').map_or(e.as_str(), |(_, rest)| rest);
        match out.last_mut() {
            Some((last, n)) if last.split_once(' ').map(|(_, r)| r) == Some(what) => *n += 1,
            _ => out.push((e.clone(), 1)),
        }
    }
    out.iter()
        .map(|(e, n)| {
            if *n > 1 {
                format!("{e} ×{n}")
            } else {
                e.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn count_publishes(
    report: &mut ChaosReport,
    publishes: &[PublishRecord],
    delivered: &HashSet<&str>,
) {
    for p in publishes {
        report.publish_retries += p.attempts.saturating_sub(1) as usize;
        if p.acknowledged() {
            report.acknowledged += 1;
        } else {
            report.unacknowledged += 1;
            let delivered = if delivered.contains(p.message_id.as_str()) {
                "delivered"
            } else {
                "never delivered"
            };
            report.problem(format!(
                "unacknowledged {} on {} ({delivered}) after {} attempts: {}",
                p.message_id,
                p.channel,
                p.attempts,
                summarize(&p.errors)
            ));
        }
    }
}

/// The acknowledged messages of each channel.
fn acknowledged_by_channel(publishes: &[PublishRecord]) -> HashMap<&str, Vec<&PublishRecord>> {
    let mut out: HashMap<&str, Vec<&PublishRecord>> = HashMap::new();
    for p in publishes.iter().filter(|p| p.acknowledged()) {
        out.entry(p.channel.as_str()).or_default().push(p);
    }
    out
}

fn count_subscriber(
    report: &mut ChaosReport,
    s: &SubscriberRecord,
    acked: &HashMap<&str, Vec<&PublishRecord>>,
    published: &HashSet<&str>,
) {
    report.deliveries += s.deliveries.len();
    report.reconnects += s.stats.reconnects;
    report.client_dedup_drops += s.stats.duplicates_dropped;
    report.slow_consumer_drops += s.stats.slow_consumer_drops;
    report.unresumed_resubscribes += s.unresumed_resubscribes;
    report.subscription_failures += s.subscription_failures.len();
    for failure in &s.subscription_failures {
        report.problem(format!(
            "subscriber {}: subscription failed: {failure}",
            s.index
        ));
    }
    count_resumes(report, s);
    count_order(report, s, published);
    let received: HashSet<(&str, &str)> = s
        .deliveries
        .iter()
        .map(|d| (d.channel.as_str(), d.message_id.as_str()))
        .collect();
    for channel in &s.channels {
        for p in acked.get(channel.as_str()).into_iter().flatten() {
            report.expected_deliveries += 1;
            if received.contains(&(channel.as_str(), p.message_id.as_str())) {
                continue;
            }
            report.lost += 1;
            let connected = connected_throughout(s, p);
            if connected {
                report.lost_while_connected += 1;
            }
            report.problem(format!(
                "subscriber {} lost {} on {channel} (serial {:?}, sent {:.2}s, acked {:.2}s, {})",
                s.index,
                p.message_id,
                p.serial,
                p.sent_at.as_secs_f64(),
                p.acked_at.unwrap_or_default().as_secs_f64(),
                if connected {
                    "connected throughout"
                } else {
                    "around a reconnect"
                }
            ));
        }
    }
}

fn count_resumes(report: &mut ChaosReport, s: &SubscriberRecord) {
    for r in &s.resumes {
        match &r.outcome {
            ResumeOutcome::Recovered { .. } => report.resumes_ok += 1,
            ResumeOutcome::Failed { code, reason } => {
                report.recovery_failed_events += 1;
                *report.resumes_failed.entry(code.clone()).or_default() += 1;
                report.problem(format!(
                    "subscriber {} resume of {} failed at {:.2}s: {code} {}",
                    s.index,
                    r.channel,
                    r.at.as_secs_f64(),
                    reason.as_deref().unwrap_or("")
                ));
            }
        }
    }
}

/// Duplicates, order, stream changes and unknown ids, per channel in delivery order.
fn count_order(report: &mut ChaosReport, s: &SubscriberRecord, published: &HashSet<&str>) {
    // Per channel: (stream id, highest serial so far) and the ids seen.
    let mut streams: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for d in &s.deliveries {
        if !published.contains(d.message_id.as_str()) {
            report.unknown_deliveries += 1;
            report.problem(format!(
                "subscriber {} got unknown message {:?} on {}",
                s.index, d.message_id, d.channel
            ));
        }
        if !seen.insert((d.channel.as_str(), d.message_id.as_str())) {
            report.duplicated += 1;
            report.problem(format!(
                "subscriber {} got {} twice on {} (serial {:?}, at {:.2}s)",
                s.index,
                d.message_id,
                d.channel,
                d.serial,
                d.at.as_secs_f64()
            ));
            continue;
        }
        let (Some(serial), Some(stream)) = (d.serial, d.stream_id.as_deref()) else {
            report.unpositioned += 1;
            continue;
        };
        match streams.get_mut(d.channel.as_str()) {
            None => {
                streams.insert(d.channel.as_str(), (stream, serial));
            }
            Some(current) if current.0 != stream => {
                report.stream_changes += 1;
                report.problem(format!(
                    "subscriber {} saw {} switch stream {} -> {stream} at {:.2}s",
                    s.index,
                    d.channel,
                    current.0,
                    d.at.as_secs_f64()
                ));
                *current = (stream, serial);
            }
            Some(current) if serial <= current.1 => {
                report.out_of_order += 1;
                report.problem(format!(
                    "subscriber {} got serial {serial} after {} on {} ({}, at {:.2}s)",
                    s.index,
                    current.1,
                    d.channel,
                    d.message_id,
                    d.at.as_secs_f64()
                ));
            }
            Some(current) => current.1 = serial,
        }
    }
}

/// Whether `s` was connected when `p` was sent and did not disconnect until the grace after
/// its acknowledgement.
fn connected_throughout(s: &SubscriberRecord, p: &PublishRecord) -> bool {
    let end = p.acked_at.unwrap_or(p.sent_at) + CONNECTED_GRACE;
    // Subscribers start connected; the last change before the publish says how it stood.
    let at_send = s
        .connection_changes
        .iter()
        .rev()
        .find(|(at, _)| *at <= p.sent_at)
        .is_none_or(|(_, connected)| *connected);
    let dropped = s
        .connection_changes
        .iter()
        .any(|(at, connected)| !connected && *at > p.sent_at && *at <= end);
    at_send && !dropped
}

fn count_presence(report: &mut ChaosReport, checks: &[PresenceCheck]) {
    report.presence_nodes_checked = checks.len();
    for c in checks.iter().filter(|c| !c.converged()) {
        let listed = c.listed.clone().unwrap_or_default();
        report.presence_diverged.push(PresenceDivergence {
            node: c.node,
            missing: c.expected.difference(&listed).cloned().collect(),
            ghosts: listed.difference(&c.expected).cloned().collect(),
            error: c.error.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::chaos::records::{Delivery, ResumeRecord};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn acked(id: &str, channel: &str, at: f64) -> PublishRecord {
        PublishRecord {
            message_id: id.into(),
            channel: channel.into(),
            sent_at: secs(at),
            acked_at: Some(secs(at + 0.01)),
            attempts: 1,
            serial: None,
            errors: Vec::new(),
        }
    }

    fn delivery(id: &str, channel: &str, serial: u64) -> Delivery {
        Delivery {
            channel: channel.into(),
            message_id: id.into(),
            serial: Some(serial),
            stream_id: Some("s1".into()),
            at: secs(serial as f64),
        }
    }

    fn subscriber(channels: &[&str], deliveries: Vec<Delivery>) -> SubscriberRecord {
        SubscriberRecord {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            deliveries,
            ..SubscriberRecord::default()
        }
    }

    fn three_on_a() -> Vec<PublishRecord> {
        vec![
            acked("m1", "a", 1.0),
            acked("m2", "a", 2.0),
            acked("m3", "a", 3.0),
        ]
    }

    #[test]
    fn everything_delivered_once_in_order_is_clean() {
        let records = ChaosRecords {
            publishes: three_on_a(),
            subscribers: vec![subscriber(
                &["a"],
                vec![
                    delivery("m1", "a", 1),
                    delivery("m2", "a", 2),
                    delivery("m3", "a", 3),
                ],
            )],
            ..ChaosRecords::default()
        };
        let report = ChaosReport::from_records(&records);
        assert_eq!((report.acknowledged, report.expected_deliveries), (3, 3));
        assert_eq!(report.deliveries, 3);
        assert!(report.is_clean(), "{report}");
        report.assert_clean();
    }

    #[test]
    fn a_missing_acknowledged_message_is_lost_and_classified() {
        let mut publishes = three_on_a();
        // Unacknowledged messages are never owed.
        publishes.push(PublishRecord {
            acked_at: None,
            attempts: 7,
            ..acked("m4", "a", 4.0)
        });
        let mut s = subscriber(&["a"], vec![delivery("m1", "a", 1), delivery("m3", "a", 3)]);
        let mut reconnecting = s.clone();
        reconnecting.connection_changes = vec![(secs(2.5), false), (secs(2.8), true)];
        s.index = 0;
        reconnecting.index = 1;
        let records = ChaosRecords {
            publishes,
            subscribers: vec![s, reconnecting],
            ..ChaosRecords::default()
        };
        let report = ChaosReport::from_records(&records);
        assert_eq!(report.lost, 2, "{report}");
        assert_eq!(
            report.lost_while_connected, 1,
            "only subscriber 0 stayed connected"
        );
        assert_eq!((report.acknowledged, report.unacknowledged), (3, 1));
        assert_eq!(report.publish_retries, 6);
        assert_eq!(report.out_of_order, 0, "a gap is not disorder");
        assert!(!report.is_clean());
    }

    #[test]
    fn duplicates_and_disorder_are_counted_separately() {
        let records = ChaosRecords {
            publishes: three_on_a(),
            subscribers: vec![subscriber(
                &["a"],
                vec![
                    delivery("m1", "a", 1),
                    delivery("m3", "a", 3),
                    delivery("m2", "a", 2),
                    delivery("m3", "a", 3),
                ],
            )],
            ..ChaosRecords::default()
        };
        let report = ChaosReport::from_records(&records);
        assert_eq!(report.lost, 0);
        assert_eq!(report.duplicated, 1, "{report}");
        assert_eq!(report.out_of_order, 1, "{report}");
        let text = report.to_string();
        assert!(text.contains("got m3 twice"), "{text}");
        assert!(text.contains("got serial 2 after 3"), "{text}");
    }

    #[test]
    fn stream_changes_failed_resumes_and_unknown_ids_fail_the_run() {
        let mut changed = delivery("m2", "a", 1);
        changed.stream_id = Some("s2".into());
        let mut unknown = delivery("zz", "a", 2);
        unknown.stream_id = Some("s2".into());
        let mut s = subscriber(&["a"], vec![delivery("m1", "a", 1), changed, unknown]);
        s.resumes = vec![
            ResumeRecord {
                channel: "a".into(),
                at: secs(1.5),
                outcome: ResumeOutcome::Failed {
                    code: "stream_reset".into(),
                    reason: None,
                },
            },
            ResumeRecord {
                channel: "a".into(),
                at: secs(5.0),
                outcome: ResumeOutcome::Recovered {
                    source: "hot".into(),
                    replayed: 2,
                },
            },
        ];
        let records = ChaosRecords {
            publishes: three_on_a(),
            subscribers: vec![s],
            ..ChaosRecords::default()
        };
        let report = ChaosReport::from_records(&records);
        assert_eq!(report.stream_changes, 1);
        assert_eq!(report.out_of_order, 0, "serials restart with a new stream");
        assert_eq!(report.unknown_deliveries, 1);
        assert_eq!(report.resumes_ok, 1);
        assert_eq!(report.resumes_failed.get("stream_reset"), Some(&1));
        assert_eq!(report.recovery_failed_events, 1);
        assert_eq!(report.lost, 1, "m3 never came");
    }

    #[test]
    fn presence_ghosts_and_missing_members_are_reported_per_node() {
        let expected: BTreeSet<String> = ["u1", "u2"].iter().map(|s| s.to_string()).collect();
        let check = |node, listed: &[&str]| PresenceCheck {
            node,
            listed: Some(listed.iter().map(|s| s.to_string()).collect()),
            expected: expected.clone(),
            error: None,
        };
        let records = ChaosRecords {
            publishes: three_on_a(),
            presence_checks: vec![check(0, &["u1", "u2"]), check(1, &["u1", "ghost"])],
            ..ChaosRecords::default()
        };
        let report = ChaosReport::from_records(&records);
        assert_eq!(report.presence_nodes_checked, 2);
        assert_eq!(report.presence_diverged.len(), 1);
        let d = &report.presence_diverged[0];
        assert_eq!(d.node, 1);
        assert!(
            d.missing.contains("u2") && d.ghosts.contains("ghost"),
            "{d:?}"
        );
        assert!(!report.is_clean());
    }

    #[test]
    #[should_panic(expected = "chaos run not clean (lost 3)")]
    fn assert_clean_panics_with_the_report() {
        let records = ChaosRecords {
            publishes: three_on_a(),
            subscribers: vec![subscriber(&["a"], Vec::new())],
            ..ChaosRecords::default()
        };
        ChaosReport::from_records(&records).assert_clean();
    }
}
