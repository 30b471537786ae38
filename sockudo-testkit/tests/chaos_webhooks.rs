//! Webhooks that survive crashes: a cluster of real `sockudo` processes whose nodes are
//! SIGKILLed and restarted (under the same node id and under new ids) while short-lived
//! occupations and presence sessions come and go, with a receiver that fails a fraction of
//! the deliveries. Every occupation must be reported exactly once occupied and once vacated,
//! in that order, and every presence session once `member_added` and once `member_removed`,
//! all within the documented bound after the last event.
//!
//! ```text
//! cargo test -p sockudo-testkit --test chaos_webhooks -- --nocapture            # CI, ≈ 1.5 min
//! cargo test -p sockudo-testkit --test chaos_webhooks -- --ignored --nocapture  # longer soak
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sockudo_core::auth::webhook_signature;
use sockudo_testkit::chaos::killer::{Killer, NodeLiveness};
use sockudo_testkit::process::ensure_sockudo_binary;
use sockudo_testkit::{Cluster, NodeMode, TestClient, APP_KEY, APP_SECRET};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Fails a fraction of the POSTs with 500; records the events of the accepted ones, in the
/// order they were accepted, after checking the signature of every request.
#[derive(Clone)]
struct FlakyReceiver {
    accepted: Arc<std::sync::Mutex<Vec<Value>>>,
    bad_signatures: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    fail_per_mille: u64,
}

impl Respond for FlakyReceiver {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let sig = req
            .headers
            .get("x-pusher-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if sig != webhook_signature(APP_SECRET, &req.body) {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(401);
        }
        // A cheap deterministic scramble of the request number: ~fail_per_mille of them fail.
        if n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1000 < self.fail_per_mille {
            return ResponseTemplate::new(500);
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut accepted = self.accepted.lock().unwrap();
        for e in body["events"].as_array().cloned().unwrap_or_default() {
            accepted.push(e);
        }
        ResponseTemplate::new(200)
    }
}

/// What one session did: its channel, and the user when it was a presence session.
#[derive(Debug, Clone)]
struct Session {
    channel: String,
    user: Option<String>,
    /// Whether the subscription succeeded (only then is anything owed).
    subscribed: bool,
    /// When the session ended (closed by the client, or its node died).
    ended: Option<Instant>,
}

struct Scenario {
    nodes: usize,
    sessions: usize,
    session_spread: Duration,
    kills: usize,
    kill_interval: Duration,
    /// Upper bound from a session's end to its last event (documented in the webhooks
    /// module docs: node timeout + removal delay + lease + backoff with a flaky receiver).
    bound: Duration,
}

async fn run_session(
    urls: Arc<Vec<String>>,
    liveness: Arc<NodeLiveness>,
    k: usize,
    seed: u64,
) -> Session {
    let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(7919));
    let presence = k % 3 == 0;
    let channel = if presence {
        format!("presence-s{k}")
    } else {
        format!("s{k}")
    };
    let user = presence.then(|| format!("u{k}"));
    let mut s = Session {
        channel: channel.clone(),
        user: user.clone(),
        subscribed: false,
        ended: None,
    };
    let first = rng.random_range(0..urls.len());
    for attempt in 0..urls.len() * 2 {
        let node = liveness.next_up_from(first + attempt);
        let Ok(mut c) = TestClient::connect(&urls[node]).await else {
            continue;
        };
        let ok = match &user {
            Some(u) => c
                .subscribe_presence(&channel, APP_KEY, APP_SECRET, u, json!({}))
                .await
                .is_ok(),
            None => c.subscribe(&channel).await.is_ok(),
        };
        if !ok {
            continue;
        }
        s.subscribed = true;
        let hold = Duration::from_millis(rng.random_range(1000..4000));
        // Hold the channel; a node death ends the session early (the socket closes).
        let _ = c.closed(hold).await;
        let _ = c.close().await;
        s.ended = Some(Instant::now());
        return s;
    }
    s
}

/// The events of `channel` (and `user`) in acceptance order, as names.
fn events_of(accepted: &[Value], channel: &str) -> Vec<String> {
    accepted
        .iter()
        .filter(|e| e["channel"] == channel)
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Problems of one session: not exactly one start and one end, or not in order.
fn check(s: &Session, accepted: &[Value]) -> Vec<String> {
    let evs = events_of(accepted, &s.channel);
    let mut problems = Vec::new();
    let occ: Vec<&str> = evs
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("channel_"))
        .collect();
    if occ != ["channel_occupied", "channel_vacated"] {
        problems.push(format!("{}: channel events {occ:?}", s.channel));
    }
    if s.user.is_some() {
        let mem: Vec<&str> = evs
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with("member_"))
            .collect();
        if mem != ["member_added", "member_removed"] {
            problems.push(format!("{}: member events {mem:?}", s.channel));
        }
    }
    problems
}

impl Scenario {
    async fn run(&self) {
        tokio::task::spawn_blocking(ensure_sockudo_binary)
            .await
            .unwrap()
            .unwrap();
        let seed: u64 = std::env::var("SOCKUDO_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("chaos_webhooks: seed {seed}");
        let receiver = FlakyReceiver {
            accepted: Arc::default(),
            bad_signatures: Arc::default(),
            requests: Arc::default(),
            fail_per_mille: 300,
        };
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(receiver.clone())
            .mount(&server)
            .await;
        let hook = format!("{}/hooks", server.uri());
        let mut cluster = Cluster::builder()
            .nodes(self.nodes)
            .redis(true)
            .mode(NodeMode::Process)
            .settings(|_, s| s.queue.driver = "redis".into())
            .env(move |_, env| {
                env.push(("SOCKUDO_DEFAULT_APP_WEBHOOK_URL".into(), hook.clone()));
                env.push(("WEBHOOK_BATCH_MS".into(), "100".into()));
                env.push(("WEBHOOK_DELAY_SECS".into(), "1".into()));
                env.push(("WEBHOOK_TIMEOUT_SECS".into(), "2".into()));
            })
            .build()
            .await
            .unwrap();
        let urls: Arc<Vec<String>> = Arc::new((0..self.nodes).map(|i| cluster.ws_url(i)).collect());
        let liveness = Arc::new(NodeLiveness::new(self.nodes));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..self.sessions {
            let at = self.session_spread * u32::try_from(k).unwrap()
                / u32::try_from(self.sessions).unwrap();
            let (urls, liveness) = (Arc::clone(&urls), Arc::clone(&liveness));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(at).await;
                run_session(urls, liveness, k, seed).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Half the restarts under the same node id, half under new ids.
        let mut kills = Vec::new();
        for half in [false, true] {
            let killer = Killer {
                kills: self.kills / 2,
                interval: self.kill_interval,
                restart_delay: Duration::from_secs(1),
                new_node_ids: half,
                seed: seed.wrapping_add(u64::from(half)),
                start,
            };
            kills.extend(killer.run(&mut cluster, &liveness).await);
        }
        let mut sessions = Vec::new();
        for t in tasks {
            sessions.push(t.await.unwrap());
        }
        let last_end = sessions
            .iter()
            .filter_map(|s| s.ended)
            .max()
            .unwrap_or(start);
        let owed: Vec<&Session> = sessions.iter().filter(|s| s.subscribed).collect();
        let deadline = last_end + self.bound;
        let mut problems;
        loop {
            let accepted = receiver.accepted.lock().unwrap().clone();
            problems = owed
                .iter()
                .flat_map(|s| check(s, &accepted))
                .collect::<Vec<_>>();
            if problems.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let settled = last_end.elapsed();
        // Late duplicates would show up now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let accepted = receiver.accepted.lock().unwrap().clone();
        let problems_after: Vec<String> = owed.iter().flat_map(|s| check(s, &accepted)).collect();
        let mut summary: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &problems_after {
            let kind = if p.contains("channel events") {
                if p.contains("channel_occupied\", \"channel_vacated\", ") {
                    "channel: extra events"
                } else if !p.contains("channel_occupied") {
                    "channel: never occupied"
                } else {
                    "channel: never vacated (or out of order)"
                }
            } else {
                "member: wrong events"
            };
            *summary.entry(kind).or_default() += 1;
        }
        eprintln!(
            "chaos_webhooks: {} sessions owed, {} kills {:?}, {} POSTs ({} failed on purpose), settled {:?} after the last session; problems {summary:?}",
            owed.len(),
            kills.len(),
            kills.iter().map(|k| (k.node, k.restarted_as.clone())).collect::<Vec<_>>(),
            receiver.requests.load(Ordering::SeqCst),
            receiver.fail_per_mille,
            settled,
        );
        assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
        assert!(kills.iter().all(|k| k.restart_error.is_none()), "{kills:?}");
        assert!(!owed.is_empty());
        assert!(
            problems.is_empty() && problems_after.is_empty(),
            "{} problems within {:?}: {problems_after:#?}",
            problems_after.len(),
            self.bound
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_occupation_and_presence_session_is_reported_once_across_crashes() {
    Scenario {
        nodes: 3,
        sessions: 45,
        session_spread: Duration::from_secs(20),
        kills: 4,
        kill_interval: Duration::from_secs(5),
        bound: Duration::from_secs(60),
    }
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: ≈ 5 min"]
async fn webhook_soak_with_many_kills() {
    Scenario {
        nodes: 3,
        sessions: 300,
        session_spread: Duration::from_secs(150),
        kills: 30,
        kill_interval: Duration::from_secs(5),
        bound: Duration::from_secs(90),
    }
    .run()
    .await;
}
