//! The executable [`PushStore`] contract: one suite every implementation must pass. Each
//! check works on a fresh random app id and panics with a message naming the broken rule.

#![allow(clippy::expect_used)] // a broken contract is a panic with its name

use std::sync::Arc;
use std::time::Duration;

use super::{
    Counters, DeadLetterFilter, DeadLetterRecord, DeviceRecord, PublishState, PushStore,
    PushStoreError, SendClaim, SendFinish, SendOutcome, StatusRecord, StatusUpdate, Subscriber,
};

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(300);
const PAST_SHORT: Duration = Duration::from_millis(700);

/// Run every check in turn.
pub async fn run_all(s: &Arc<dyn PushStore>) {
    devices(s).await;
    subscriptions(s).await;
    status_create_is_set_if_absent(s).await;
    status_updates(s).await;
    status_expires(s).await;
    send_markers(s).await;
    dead_letters(s).await;
    apps_isolated(s).await;
}

fn fresh_app() -> String {
    format!("conf-{:016x}", rand::random::<u64>())
}

#[track_caller]
fn ok<T>(r: Result<T, PushStoreError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected store error {e}"),
    }
}

fn dev(id: &str, client: Option<&str>) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        client_id: client.map(Into::into),
        body: format!("{{\"id\":\"{id}\"}}"),
    }
}

fn status(pid: &str, campaign: &str) -> StatusRecord {
    StatusRecord {
        publish_id: pid.into(),
        campaign: campaign.into(),
        body: "{\"x\":1}".into(),
        state: PublishState::Queued,
        counters: Counters::default(),
        pending_shards: 0,
        planning_done: false,
        error_reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

/// Registrations: create vs update, client index, pages, delete with subscriptions.
pub async fn devices(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    for i in 0..5 {
        let d = dev(&format!("d{i}"), Some(if i < 3 { "alice" } else { "bob" }));
        assert!(ok(s.put_device(&app, &d).await), "a new device is created");
    }
    assert!(
        !ok(s.put_device(&app, &dev("d0", Some("bob"))).await),
        "an update"
    );
    let page1 = ok(s.list_devices(&app, None, None, 3).await);
    let ids: Vec<_> = page1.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d0", "d1", "d2"], "ordered by id");
    let page2 = ok(s.list_devices(&app, None, Some("d2"), 3).await);
    let ids: Vec<_> = page2.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d3", "d4"], "strictly after the cursor");
    let alice = ok(s.list_devices(&app, Some("alice"), None, 10).await);
    let ids: Vec<_> = alice.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2"], "the client index follows an update");
    let got = ok(s.get_devices(&app, &["d0".into(), "zz".into()]).await);
    assert_eq!(
        got[0].as_ref().map(|d| d.client_id.as_deref()),
        Some(Some("bob"))
    );
    assert!(got[1].is_none());
    ok(s.subscribe(&app, "news", &Subscriber::Device("d1".into()))
        .await);
    assert!(ok(s.delete_device(&app, "d1").await));
    assert!(!ok(s.delete_device(&app, "d1").await), "deleting twice");
    let subs = ok(s.channel_subscribers(&app, "news", None, 10).await);
    assert!(
        subs.is_empty(),
        "a deleted device's subscriptions go: {subs:?}"
    );
    assert!(ok(s.channels(&app, None, 10).await).is_empty());
    let alice = ok(s.list_devices(&app, Some("alice"), None, 10).await);
    assert_eq!(alice.len(), 1);
}

/// Channel subscriptions: by channel, by subscriber, channel list, unsubscribe.
pub async fn subscriptions(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    let d = |i: u32| Subscriber::Device(format!("d{i:02}"));
    for i in 0..25 {
        assert!(ok(s.subscribe(&app, "big", &d(i)).await));
    }
    assert!(
        !ok(s.subscribe(&app, "big", &d(0)).await),
        "subscribing twice"
    );
    ok(
        s.subscribe(&app, "big", &Subscriber::Client("carol".into()))
            .await,
    );
    ok(s.subscribe(&app, "alpha", &d(0)).await);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ok(s
            .channel_subscribers(&app, "big", after.as_deref(), 10)
            .await);
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        seen.extend(page);
    }
    assert_eq!(seen.len(), 26, "every subscriber exactly once over pages");
    assert!(seen.contains(&Subscriber::Client("carol".into())));
    let chans = ok(s.subscriber_channels(&app, &d(0), None, 10).await);
    assert_eq!(chans, ["alpha", "big"]);
    assert_eq!(ok(s.channels(&app, None, 10).await), ["alpha", "big"]);
    assert_eq!(ok(s.channels(&app, Some("alpha"), 10).await), ["big"]);
    assert!(ok(s.unsubscribe(&app, "alpha", &d(0)).await));
    assert!(!ok(s.unsubscribe(&app, "alpha", &d(0)).await));
    assert_eq!(
        ok(s.channels(&app, None, 10).await),
        ["big"],
        "empty channels go"
    );
    assert_eq!(
        ok(s.subscriber_channels(&app, &d(0), None, 10).await),
        ["big"]
    );
}

/// Of concurrent creators of one publish id exactly one wins; the others see its record.
pub async fn status_create_is_set_if_absent(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = Arc::clone(s);
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            ok(s.create_status(&app, &status("p1", &format!("c{i}")), LONG)
                .await)
        }));
    }
    let mut winners = 0;
    let mut campaigns = std::collections::HashSet::new();
    for t in tasks {
        match t.await {
            Ok(None) => winners += 1,
            Ok(Some(existing)) => {
                campaigns.insert(existing.campaign);
            }
            Err(e) => panic!("task failed: {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one creator wins");
    assert!(campaigns.len() <= 1, "losers all see the winner's record");
    let got = ok(s.get_status(&app, "p1").await).expect("created");
    assert_eq!(got.body, "{\"x\":1}");
    assert!(ok(s.get_status(&app, "p2").await).is_none());
}

/// Counter deltas add up; terminal states stick unless reopened; once-keys apply once.
pub async fn status_updates(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    ok(s.create_status(&app, &status("p", "c"), LONG).await);
    let mut u = StatusUpdate {
        pending_shards: 2,
        state: Some(PublishState::Dispatching),
        now_ms: 10,
        ..StatusUpdate::default()
    };
    u.counters.planned = 5;
    u.counters.succeeded = 2;
    let r = ok(s.update_status(&app, "p", &u).await).expect("exists");
    assert_eq!(
        (r.counters.planned, r.counters.succeeded, r.pending_shards),
        (5, 2, 2)
    );
    assert_eq!(r.state, PublishState::Dispatching);
    assert_eq!(r.updated_at_ms, 10);
    let once = StatusUpdate {
        pending_shards: -1,
        once: Some("shard-1".into()),
        ..StatusUpdate::default()
    };
    ok(s.update_status(&app, "p", &once).await);
    let r = ok(s.update_status(&app, "p", &once).await).expect("exists");
    assert_eq!(r.pending_shards, 1, "a once-key applies once");
    let done = StatusUpdate {
        state: Some(PublishState::Succeeded),
        planning_done: Some(true),
        error_reason: Some("why".into()),
        ..StatusUpdate::default()
    };
    ok(s.update_status(&app, "p", &done).await);
    let back = StatusUpdate {
        state: Some(PublishState::Dispatching),
        ..StatusUpdate::default()
    };
    let r = ok(s.update_status(&app, "p", &back).await).expect("exists");
    assert_eq!(r.state, PublishState::Succeeded, "a terminal state sticks");
    assert!(r.planning_done);
    assert_eq!(r.error_reason.as_deref(), Some("why"));
    let reopen = StatusUpdate {
        reopen: true,
        ..back
    };
    let r = ok(s.update_status(&app, "p", &reopen).await).expect("exists");
    assert_eq!(r.state, PublishState::Dispatching, "reopen changes it");
    assert!(ok(s.update_status(&app, "nope", &reopen).await).is_none());
}

/// A status is gone after its retention; the publish id can then be used again.
pub async fn status_expires(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    ok(s.create_status(&app, &status("p", "c1"), SHORT).await);
    assert!(ok(s.get_status(&app, "p").await).is_some());
    tokio::time::sleep(PAST_SHORT).await;
    assert!(ok(s.get_status(&app, "p").await).is_none(), "expired");
    assert!(ok(s.create_status(&app, &status("p", "c2"), LONG).await).is_none());
}

/// Send markers: one holder per device; resumption; only the holder finishes; release;
/// `planned` and outcome counters move with the markers, atomically and once.
pub async fn send_markers(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    ok(s.create_status(&app, &status("p", "c"), LONG).await);
    let devs: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
    let first = ok(s.claim_sends(&app, "p", "p", "s1", &devs, LONG).await);
    assert_eq!(first, vec![SendClaim::Fresh { first: true }; 3]);
    let other = ok(s.claim_sends(&app, "p", "p", "s2", &devs[..1], LONG).await);
    assert_eq!(other, [SendClaim::Taken], "held by another shard");
    let again = ok(s.claim_sends(&app, "p", "p", "s1", &devs[..1], LONG).await);
    assert_eq!(again, [SendClaim::Resumed], "the same shard redelivered");
    let results = [
        SendFinish::new("a", SendOutcome::Done, Some("succeeded")),
        SendFinish::new("b", SendOutcome::Release, Some("retryScheduled")),
    ];
    assert_eq!(
        ok(s.finish_sends(&app, "p", "p", "s1", &results).await),
        [true, true]
    );
    assert_eq!(
        ok(s.finish_sends(&app, "p", "p", "s1", &results).await),
        [false, false],
        "finishing twice changes nothing"
    );
    let not_mine = [SendFinish::new("c", SendOutcome::Done, Some("failed"))];
    assert_eq!(
        ok(s.finish_sends(&app, "p", "p", "s2", &not_mine).await),
        [false],
        "only the holder finishes"
    );
    let later = ok(s.claim_sends(&app, "p", "p", "s3", &devs, LONG).await);
    assert_eq!(
        later,
        [
            SendClaim::Taken,
            SendClaim::Fresh { first: false },
            SendClaim::Taken
        ],
        "done stays taken, released is fresh again (not first)"
    );
    let st = ok(s.get_status(&app, "p").await).expect("exists");
    let c = st.counters;
    assert_eq!(
        (c.planned, c.succeeded, c.retry_scheduled, c.failed),
        (3, 1, 1, 0),
        "counted once per first claim and per changed marker"
    );
    let replay = ok(s
        .claim_sends(&app, "p", "p#r1", "s1", &devs[..1], LONG)
        .await);
    assert_eq!(
        replay,
        [SendClaim::Fresh { first: true }],
        "markers are per key"
    );
    let other_app = ok(s
        .claim_sends(&fresh_app(), "p", "p", "s1", &devs[..1], LONG)
        .await);
    assert_eq!(other_app, [SendClaim::Fresh { first: true }]);
}

/// Dead letters: pages, filters, take once, expiry.
pub async fn dead_letters(s: &Arc<dyn PushStore>) {
    let app = fresh_app();
    let letter = |t: u64, p: &str| DeadLetterRecord {
        id: format!("{t:013}-{:08x}", rand::random::<u32>()),
        provider: p.into(),
        occurred_at_ms: t,
        body: "{\"reason\":\"x|y\"}".into(),
    };
    let all: Vec<DeadLetterRecord> = (0..6u64)
        .map(|i| letter(1000 + i, if i % 2 == 0 { "fcm" } else { "apns" }))
        .collect();
    for l in &all {
        ok(s.add_dead_letter(&app, l, LONG).await);
    }
    let none = DeadLetterFilter::default();
    let p1 = ok(s.list_dead_letters(&app, &none, None, 4).await);
    assert_eq!(p1, all[..4], "ordered by id, body intact");
    let p2 = ok(s.list_dead_letters(&app, &none, Some(&p1[3].id), 4).await);
    assert_eq!(p2, all[4..]);
    let fcm = DeadLetterFilter {
        provider: Some("fcm".into()),
        ..DeadLetterFilter::default()
    };
    let got = ok(s.list_dead_letters(&app, &fcm, None, 10).await);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|l| l.provider == "fcm"));
    let window = DeadLetterFilter {
        since_ms: Some(1002),
        until_ms: Some(1004),
        ..DeadLetterFilter::default()
    };
    let got = ok(s.list_dead_letters(&app, &window, None, 10).await);
    assert_eq!(got, all[2..4], "since inclusive, until exclusive");
    assert_eq!(
        ok(s.take_dead_letter(&app, &all[0].id).await).as_ref(),
        Some(&all[0])
    );
    assert!(
        ok(s.take_dead_letter(&app, &all[0].id).await).is_none(),
        "taken once"
    );
    let app2 = fresh_app();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ok(s.add_dead_letter(&app2, &letter(now, "fcm"), SHORT).await);
    assert_eq!(
        ok(s.list_dead_letters(&app2, &none, None, 10).await).len(),
        1
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        ok(s.list_dead_letters(&app2, &none, None, 10).await).is_empty(),
        "expired"
    );
}

/// Nothing of one app is visible from another.
pub async fn apps_isolated(s: &Arc<dyn PushStore>) {
    let (a, b) = (fresh_app(), fresh_app());
    ok(s.put_device(&a, &dev("d", Some("c"))).await);
    ok(s.subscribe(&a, "ch", &Subscriber::Device("d".into())).await);
    ok(s.create_status(&a, &status("p", "c"), LONG).await);
    assert!(ok(s.list_devices(&b, None, None, 10).await).is_empty());
    assert!(ok(s.channels(&b, None, 10).await).is_empty());
    assert!(ok(s.get_status(&b, "p").await).is_none());
    assert!(!ok(s.delete_device(&b, "d").await));
}
