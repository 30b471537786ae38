//! Operating a node: `/metrics` (gauges go down too), `/ready` reasons, SIGTERM drain with a
//! clean cluster leave, and JSON logs.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sockudo_testkit::{
    ensure_sockudo_binary, ApiClient, Cluster, NodeMode, ProcessNode, TestClient, APP_ID, APP_KEY,
    APP_SECRET,
};

const WAIT: Duration = Duration::from_secs(5);

async fn binary() {
    tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// The value of the first sample line of `metrics` whose name is `name` and whose labels
/// include every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name
                || !labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse().ok()
        })
}

/// Poll `/metrics` until `pred` holds (or fail with the last body).
async fn wait_metrics(url: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = get(url).await.map(|(_, b)| b).unwrap_or_default();
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}; metrics:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_gauges_go_down() {
    binary().await;
    let port = free_port();
    let node = ProcessNode::start(vec![
        ("SOCKUDO_NODE_ID".into(), "metrics-0".into()),
        ("METRICS_PORT".into(), port.to_string()),
    ])
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let body = wait_metrics(&url, "metrics served", |b| {
        b.contains("sockudo_idempotency_replays_total")
    })
    .await;
    assert!(
        !body.contains("sockudo_push_"),
        "no metric of a feature that does not exist:\n{body}"
    );
    assert!(
        body.contains("node_id=\"metrics-0\""),
        "node_id is a global label:\n{body}"
    );

    let mut a = TestClient::connect(&node.ws_url(APP_KEY)).await.unwrap();
    let mut b = TestClient::connect(&node.ws_url(APP_KEY)).await.unwrap();
    a.subscribe("news").await.unwrap();
    b.subscribe_presence("presence-room", APP_KEY, APP_SECRET, "u1", json!({}))
        .await
        .unwrap();
    let api = ApiClient::new(&node.http_url(), APP_ID, APP_KEY, APP_SECRET);
    assert_eq!(api.trigger("news", "e", json!(1)).await.unwrap().0, 200);
    assert_eq!(a.recv_event("e", WAIT).await.unwrap().data_json(), json!(1));

    let app = [("app_id", APP_ID)];
    let up = wait_metrics(
        &url,
        "two connections, two subscriptions, one publish",
        |m| {
            sample(m, "sockudo_connections", &app) == Some(2.0)
                && sample(
                    m,
                    "sockudo_subscriptions",
                    &[("app_id", APP_ID), ("class", "public")],
                ) == Some(1.0)
                && sample(
                    m,
                    "sockudo_subscriptions",
                    &[("app_id", APP_ID), ("class", "presence")],
                ) == Some(1.0)
                && sample(
                    m,
                    "sockudo_publishes_accepted_total",
                    &[("app_id", APP_ID), ("source", "http")],
                ) == Some(1.0)
        },
    )
    .await;
    assert!(
        sample(&up, "sockudo_ws_bytes_sent_total", &app).unwrap_or(0.0) > 0.0,
        "{up}"
    );
    assert!(
        sample(&up, "sockudo_ws_bytes_received_total", &app).unwrap_or(0.0) > 0.0,
        "{up}"
    );
    assert!(
        up.contains("sockudo_fanout_duration_seconds_bucket"),
        "fanout histogram:\n{up}"
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    wait_metrics(&url, "the gauges went back to 0", |m| {
        sample(m, "sockudo_connections", &app) == Some(0.0)
            && sample(
                m,
                "sockudo_subscriptions",
                &[("app_id", APP_ID), ("class", "public")],
            ) == Some(0.0)
            && sample(
                m,
                "sockudo_subscriptions",
                &[("app_id", APP_ID), ("class", "presence")],
            ) == Some(0.0)
            && sample(
                m,
                "sockudo_connections_closed_total",
                &[("app_id", APP_ID), ("code", "peer")],
            ) == Some(2.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_peers_drop_presence_at_once() {
    binary().await;
    let mut cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .mode(NodeMode::Process)
        .settings(|_, s| {
            // A sweep could not explain a prompt member_removed: the liveness timeout is long.
            s.cluster.node_timeout_ms = 30_000;
            s.shutdown_grace_period = 1;
        })
        .build()
        .await
        .unwrap();
    let mut a = cluster.client(0).await.unwrap();
    let mut b = cluster.client(1).await.unwrap();
    a.subscribe_presence("presence-ops", APP_KEY, APP_SECRET, "leaver", json!({}))
        .await
        .unwrap();
    b.subscribe_presence("presence-ops", APP_KEY, APP_SECRET, "stayer", json!({}))
        .await
        .unwrap();
    let ready0 = format!("{}/ready", cluster.node(0).http_url());
    assert_eq!(get(&ready0).await.map(|r| r.0), Some(200));

    let started = Instant::now();
    let poll = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some((503, body)) = get(&ready0).await {
                return Some(body);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let (drained, unready) = tokio::join!(cluster.node_mut(0).drain(), poll);
    drained.unwrap(); // exit status 0 after SIGTERM, or an error with the log tail
    assert_eq!(
        unready.as_deref(),
        Some("draining"),
        "readiness went 503 during the drain"
    );
    assert_eq!(
        a.close_code(WAIT).await.unwrap(),
        Some(4200),
        "drained sockets close with 4200"
    );
    let removed = b
        .recv_event_on(
            "presence-ops",
            "pusher_internal:member_removed",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(removed.data["user_id"], "leaver");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "member_removed came from the drain, not a 30 s sweep: {:?}",
        started.elapsed()
    );
    let (status, users) = cluster
        .api(1)
        .get("/channels/presence-ops/users", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        users,
        json!({ "users": [{ "id": "stayer" }] }),
        "no ghost of the drained node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_an_unreachable_cache_or_adapter() {
    // Cache on Redis, adapter local: cutting Redis leaves only the cache unreachable.
    let cluster = Cluster::builder()
        .nodes(1)
        .redis(true)
        .settings(|_, s| s.adapter.driver = "local".into())
        .build()
        .await
        .unwrap();
    let ready = format!("{}/ready", cluster.node(0).http_url());
    assert_eq!(get(&ready).await, Some((200, "ready".into())));
    cluster.cut_redis(0).unwrap();
    let (status, body) = get(&ready).await.unwrap();
    assert_eq!(status, 503);
    assert!(body.starts_with("cache unavailable"), "{body}");
    assert_eq!(
        get(&format!("{}/health", cluster.node(0).http_url()))
            .await
            .map(|r| r.0),
        Some(200),
        "alive all the same"
    );
    cluster.restore_redis(0).unwrap();
    wait_ready(&ready).await;

    // Adapter on Redis, cache in memory: cutting Redis leaves only the adapter unreachable.
    let cluster = Cluster::builder()
        .nodes(1)
        .redis(true)
        .settings(|_, s| s.cache.driver = "memory".into())
        .build()
        .await
        .unwrap();
    let ready = format!("{}/ready", cluster.node(0).http_url());
    wait_ready(&ready).await;
    cluster.cut_redis(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&ready).await.unwrap();
        if status == 503 {
            assert_eq!(body, "adapter unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the adapter outage never showed in /ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restore_redis(0).unwrap();
    wait_ready(&ready).await;
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = get(url).await;
        if matches!(&got, Some((200, _))) {
            return;
        }
        assert!(Instant::now() < deadline, "never ready again: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    binary().await;
    let env = vec![
        ("LOG_FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "sockudo_server=debug,info".into()),
    ];
    let mut node = ProcessNode::start(env).await.unwrap();
    let client = TestClient::connect(&node.ws_url(APP_KEY)).await.unwrap();
    let socket_id = client.socket_id().to_string();
    client.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node.terminate().await.unwrap().success());
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let opened = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connection opened")
        .unwrap_or_else(|| panic!("no connection-opened line:\n{log}"));
    assert_eq!(opened["level"], "DEBUG");
    assert_eq!(opened["fields"]["socket_id"], socket_id.as_str());
    assert_eq!(opened["fields"]["app_id"], APP_ID);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "connection closed by peer"
                && l["fields"]["socket_id"] == socket_id.as_str()),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "drained"),
        "{log}"
    );
}
