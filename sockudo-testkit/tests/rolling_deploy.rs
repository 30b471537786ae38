//! Rolling deploy without loss: 3 nodes behind the testkit's balancer (probing `/ready` like a
//! Kubernetes Service), V1 clients (pusher protocol 7, reconnect + resubscribe on 4200) and V2
//! clients (`sockudo-client`: reconnect + resume + dedup), a steady publish stream through the
//! balancer; every node is drained, stopped and started again, one at a time.
//!
//! Asserted: readiness went 503 ("draining") before each node stopped; every V1 client
//! reconnected and resubscribed; V2 clients lost no confirmed message and saw no duplicate;
//! no presence ghost remains (the liveness timeout is 30 s, so only a clean leave can explain
//! prompt removals). The CI scale is small; `rolling_deploy_large` (ignored) is the run
//! recorded in BENCHMARKS.md:
//!
//! ```text
//! cargo test -p sockudo-testkit --release --test rolling_deploy -- --ignored --nocapture
//! ```

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockudo_client::{
    authorizer_fn, ChannelAuth, ChannelEvent, Client, ClientOptions, ExponentialBackoff, Protocol,
};
use sockudo_testkit::{Cluster, TestClient, APP_KEY, APP_SECRET};
use tokio::sync::{watch, Mutex};

const PRESENCE: &str = "presence-roll";

#[derive(Debug, Clone, Copy)]
struct Scale {
    v1: usize,
    v2: usize,
    channels: usize,
    publishes_per_second: u64,
}

/// What one run measured.
#[derive(Debug, Default)]
struct Report {
    published: usize,
    publish_retries: usize,
    v1_reconnects: usize,
    v1_reconnect_ms: Vec<u128>,
    v2_reconnects: u64,
    v2_resumes_ok: u64,
    v2_resumes_failed: u64,
    v2_recovery_failures: usize,
    v2_lost: usize,
    v2_duplicates: usize,
    v2_client_dedup_drops: u64,
    v1_duplicates: usize,
    roll_secs: f64,
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Per channel: the seqs whose publish was confirmed (200).
type Confirmed = Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>;

async fn publisher(
    cluster_api: sockudo_testkit::ApiClient,
    channels: Vec<String>,
    per_second: u64,
    confirmed: Confirmed,
    stop: watch::Receiver<bool>,
) -> (usize, usize) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second.max(1)));
    let mut seq: HashMap<String, u64> = HashMap::new();
    let (mut sent, mut retries) = (0, 0);
    let mut i = 0usize;
    while !*stop.borrow() {
        tick.tick().await;
        let channel = &channels[i % channels.len()];
        i += 1;
        let n = {
            let s = seq.entry(channel.clone()).or_insert(0);
            *s += 1;
            *s
        };
        // The same message_id on a retry: one message, one serial (V2 dedup window).
        let body = json!({ "name": "tick", "channel": channel, "data": json!({ "seq": n }).to_string(), "message_id": format!("{channel}:{n}") });
        for attempt in 0..20 {
            match cluster_api.trigger_body(&body).await {
                Ok((200, _)) => {
                    confirmed
                        .lock()
                        .await
                        .entry(channel.clone())
                        .or_default()
                        .insert(n);
                    sent += 1;
                    break;
                }
                _ => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                }
            }
        }
    }
    (sent, retries)
}

/// A V1 client: connect through the balancer, subscribe, and on any close reconnect and
/// resubscribe (a new presence user id per connection, so a ghost of an old one would show).
struct V1Outcome {
    seqs: Vec<u64>,
    reconnect_ms: Vec<u128>,
    user: Option<String>,
}

async fn v1_client(
    url: String,
    idx: usize,
    channel: String,
    presence: bool,
    current_users: Arc<Mutex<BTreeSet<String>>>,
    stop: watch::Receiver<bool>,
) -> V1Outcome {
    let mut out = V1Outcome {
        seqs: Vec::new(),
        reconnect_ms: Vec::new(),
        user: None,
    };
    let mut generation = 0;
    let mut lost_at: Option<Instant> = None;
    'outer: while !*stop.borrow() {
        let connected = async {
            let mut c = TestClient::connect(&url).await?;
            c.subscribe(&channel).await?;
            let user = format!("v1-{idx}-g{generation}");
            if presence {
                c.subscribe_presence(PRESENCE, APP_KEY, APP_SECRET, &user, json!({}))
                    .await?;
            }
            Ok::<_, sockudo_testkit::TestkitError>((c, user))
        }
        .await;
        let (mut client, user) = match connected {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        generation += 1;
        if presence {
            let mut users = current_users.lock().await;
            if let Some(old) = out.user.replace(user.clone()) {
                users.remove(&old);
            }
            users.insert(user);
        }
        if let Some(t) = lost_at.take() {
            out.reconnect_ms.push(t.elapsed().as_millis());
        }
        loop {
            let events = client
                .events_until(Duration::from_millis(100))
                .await
                .unwrap_or_default();
            for e in events.into_iter().chain(client.take_pending()) {
                if e.event == "tick" && e.channel.as_deref() == Some(channel.as_str()) {
                    if let Some(n) = e.data_json()["seq"].as_u64() {
                        out.seqs.push(n);
                    }
                }
            }
            if client.close_outcome().is_some() {
                lost_at = Some(Instant::now());
                continue 'outer;
            }
            if *stop.borrow() {
                let _ = client.close().await;
                break 'outer;
            }
        }
    }
    out
}

/// A V2 client (`sockudo-client`): every message of its channel, and recovery failures.
struct V2Outcome {
    seqs: Vec<u64>,
    recovery_failures: usize,
    client: Client,
}

async fn v2_client(
    base: String,
    idx: usize,
    channel: String,
    presence: bool,
    stop: watch::Receiver<bool>,
) -> V2Outcome {
    let user = format!("v2-{idx}");
    let auth_user = user.clone();
    let opts = ClientOptions::new(APP_KEY)
        .url(&base)
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(ExponentialBackoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .authorizer(authorizer_fn(move |req| {
            let user = auth_user.clone();
            async move {
                let channel_data = json!({ "user_id": user }).to_string();
                let auth = sockudo_core::auth::sign_channel(
                    APP_KEY,
                    APP_SECRET,
                    &req.socket_id,
                    &req.channel_name,
                    Some(&channel_data),
                );
                Ok(ChannelAuth {
                    auth,
                    channel_data: Some(channel_data),
                    shared_secret: None,
                })
            }
        }));
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe(channel.clone()).await.unwrap();
    let _presence = if presence {
        Some(client.subscribe(PRESENCE).await.unwrap())
    } else {
        None
    };
    let mut out = V2Outcome {
        seqs: Vec::new(),
        recovery_failures: 0,
        client: client.clone(),
    };
    let mut stop = stop;
    loop {
        tokio::select! {
            ev = sub.next() => match ev {
                Some(ChannelEvent::Message(m)) if m.event == "tick" => {
                    if let Some(n) = m.json::<Value>().ok().and_then(|v| v["seq"].as_u64()) {
                        out.seqs.push(n);
                    }
                }
                Some(ChannelEvent::RecoveryFailed(f)) => {
                    eprintln!("v2 client {idx}: recovery failed on {}: {} {:?}", f.channel, f.code, f.reason);
                    out.recovery_failures += 1;
                }
                Some(_) => {}
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    // Drain what is already queued.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        if let ChannelEvent::Message(m) = ev {
            if let Some(n) = m.json::<Value>().ok().and_then(|v| v["seq"].as_u64()) {
                out.seqs.push(n);
            }
        }
    }
    out
}

async fn ready_status(addr: SocketAddr) -> Option<u16> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    Some(
        http.get(format!("http://{addr}/ready"))
            .send()
            .await
            .ok()?
            .status()
            .as_u16(),
    )
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut pred: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
) {
    let deadline = Instant::now() + limit;
    while !pred().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rolling_deploy(scale: Scale) -> Report {
    let mut cluster = Cluster::builder()
        .nodes(3)
        .redis(true)
        .settings(|_, s| {
            s.shutdown_grace_period = 1;
            // Only a clean leave can remove a drained node's members within the test.
            s.cluster.node_timeout_ms = 30_000;
            s.hot_buffer_messages = 2000;
        })
        .build()
        .await
        .unwrap();
    cluster
        .balancer()
        .probe_readiness(Duration::from_millis(50));
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|n| n.addr()).collect();
    for a in &addrs {
        let a = *a;
        wait_until("nodes ready", Duration::from_secs(10), || {
            Box::pin(async move { ready_status(a).await == Some(200) })
        })
        .await;
    }
    let channels: Vec<String> = (0..scale.channels).map(|i| format!("roll-{i}")).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let users = Arc::new(Mutex::new(BTreeSet::new()));
    let ws_url = cluster.balancer_ws_url();
    let base = cluster.balancer_url().replace("http://", "ws://");

    let mut v1 = Vec::new();
    for i in 0..scale.v1 {
        let task = v1_client(
            ws_url.clone(),
            i,
            channels[i % channels.len()].clone(),
            i % 3 == 0,
            Arc::clone(&users),
            stop_rx.clone(),
        );
        v1.push((channels[i % channels.len()].clone(), tokio::spawn(task)));
    }
    let mut v2 = Vec::new();
    let mut v2_users = BTreeSet::new();
    for i in 0..scale.v2 {
        let presence = i % 5 == 0;
        if presence {
            v2_users.insert(format!("v2-{i}"));
        }
        let task = v2_client(
            base.clone(),
            i,
            channels[i % channels.len()].clone(),
            presence,
            stop_rx.clone(),
        );
        v2.push((channels[i % channels.len()].clone(), tokio::spawn(task)));
    }
    // Let everyone connect and subscribe before the stream starts.
    let expected_v1_presence = scale.v1.div_ceil(3);
    {
        let users = Arc::clone(&users);
        wait_until(
            "V1 clients subscribed",
            Duration::from_secs(30),
            move || {
                let users = Arc::clone(&users);
                Box::pin(async move { users.lock().await.len() == expected_v1_presence })
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let confirmed: Confirmed = Arc::default();
    let publisher = tokio::spawn(publisher(
        cluster.balancer_api(),
        channels.clone(),
        scale.publishes_per_second,
        Arc::clone(&confirmed),
        stop_rx.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Roll every node: drain (SIGTERM path), wait for it to stop, start it on the same port.
    let roll_start = Instant::now();
    for (i, &addr) in addrs.iter().enumerate() {
        let drain_started = Instant::now();
        cluster.drain_node(i).await.unwrap();
        let stopped_at = Instant::now();
        // Readiness went 503 "draining" after the drain began and before the node stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = cluster.balancer().probe_log();
        let went_unready = log.iter().any(|r| {
            r.backend == addr
                && r.at >= drain_started
                && r.at <= stopped_at
                && r.status == Some(503)
                && r.body == "draining"
        });
        assert!(
            went_unready,
            "node {i}: no 503 \"draining\" seen before it stopped; probe log: {log:#?}"
        );
        cluster.restart_node(i).await.unwrap();
        wait_until("the restarted node ready", Duration::from_secs(10), || {
            Box::pin(async move { ready_status(addr).await == Some(200) })
        })
        .await;
        // Let the clients settle before the next roll.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let roll_secs = roll_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // No presence ghost: the members are exactly the live connections' users.
    let expected_users: BTreeSet<String> = users
        .lock()
        .await
        .iter()
        .cloned()
        .chain(v2_users.iter().cloned())
        .collect();
    let api = cluster.api(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = api
            .get(&format!("/channels/{PRESENCE}/users"), &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let members: BTreeSet<String> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["id"].as_str().map(str::to_owned))
            .collect();
        if members == expected_users {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence members differ from live users\nexpected {expected_users:?}\ngot {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop_tx.send_replace(true);
    let (published, publish_retries) = publisher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirmed = confirmed.lock().await.clone();
    let mut report = Report {
        published,
        publish_retries,
        roll_secs,
        ..Report::default()
    };

    for (channel, task) in v1 {
        let o = task.await.unwrap();
        assert!(
            !o.reconnect_ms.is_empty(),
            "every V1 client was on a drained node and reconnected"
        );
        report.v1_reconnects += o.reconnect_ms.len();
        report.v1_reconnect_ms.extend(o.reconnect_ms);
        let unique: BTreeSet<u64> = o.seqs.iter().copied().collect();
        report.v1_duplicates += o.seqs.len() - unique.len();
        let last = confirmed
            .get(&channel)
            .and_then(|s| s.iter().next_back())
            .copied()
            .unwrap_or(0);
        assert!(
            unique.iter().any(|s| *s + 20 >= last),
            "V1 client on {channel} resubscribed and receives again (last seen {:?} of {last})",
            unique.iter().next_back()
        );
    }
    for (channel, task) in v2 {
        let o = task.await.unwrap();
        let stats = o.client.stats();
        report.v2_reconnects += stats.reconnects;
        report.v2_resumes_ok += stats.resumes_succeeded;
        report.v2_resumes_failed += stats.resumes_failed;
        report.v2_client_dedup_drops += stats.duplicates_dropped;
        report.v2_recovery_failures += o.recovery_failures;
        let _ = o.client.close().await;
        let unique: BTreeSet<u64> = o.seqs.iter().copied().collect();
        report.v2_duplicates += o.seqs.len() - unique.len();
        let first = unique.iter().next().copied().unwrap_or(u64::MAX);
        let missing: Vec<u64> = confirmed
            .get(&channel)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|n| *n >= first && !unique.contains(n))
                    .collect()
            })
            .unwrap_or_default();
        if !missing.is_empty() {
            eprintln!(
                "V2 client on {channel} missed {} messages, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        report.v2_lost += missing.len();
        // Ordering: a V2 stream delivers in serial order.
        assert!(
            o.seqs.windows(2).all(|w| w[0] < w[1]),
            "V2 client on {channel} saw messages out of order"
        );
    }
    report.v1_reconnect_ms.sort_unstable();
    let r = &report;
    println!(
        "ROLLING-DEPLOY nodes=3 v1={} v2={} rate={}/s roll={:.1}s published={} publish_retries={} v1_reconnects={} v1_reconnect_ms_p50={} p99={} max={} v1_duplicates={} v2_reconnects={} v2_resumes_ok={} v2_resumes_failed={} v2_recovery_failures={} v2_lost={} v2_duplicates={} v2_client_dedup_drops={}",
        scale.v1,
        scale.v2,
        scale.publishes_per_second,
        r.roll_secs,
        r.published,
        r.publish_retries,
        r.v1_reconnects,
        percentile(&r.v1_reconnect_ms, 0.5),
        percentile(&r.v1_reconnect_ms, 0.99),
        r.v1_reconnect_ms.last().copied().unwrap_or(0),
        r.v1_duplicates,
        r.v2_reconnects,
        r.v2_resumes_ok,
        r.v2_resumes_failed,
        r.v2_recovery_failures,
        r.v2_lost,
        r.v2_duplicates,
        r.v2_client_dedup_drops,
    );
    report
}

fn assert_no_loss(r: &Report) {
    assert!(r.published > 0);
    assert_eq!(r.v2_recovery_failures, 0, "V2 resumes failed: {r:?}");
    assert_eq!(r.v2_lost, 0, "V2 clients lost messages: {r:?}");
    assert_eq!(r.v2_duplicates, 0, "V2 clients saw duplicates: {r:?}");
    assert!(
        r.v2_reconnects > 0,
        "V2 clients were moved by the roll: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_deploy_loses_nothing() {
    let report = rolling_deploy(Scale {
        v1: 30,
        v2: 30,
        channels: 3,
        publishes_per_second: 20,
    })
    .await;
    assert_no_loss(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "larger run recorded in BENCHMARKS.md (≥ 300 clients)"]
async fn rolling_deploy_large() {
    let report = rolling_deploy(Scale {
        v1: 150,
        v2: 150,
        channels: 6,
        publishes_per_second: 50,
    })
    .await;
    assert_no_loss(&report);
}
