//! One app, three nodes, one PostgreSQL database, the real pusher-js client
//! (conformance/cluster/app_lifecycle.js): an app created through the admin API of node A is
//! usable on node C; its secret rotated on A is refused with the old signature and accepted
//! with the new one on every node; disabled on A, its open connections close on every node.
//!
//! The poll interval is 60 s, so only the invalidation sent over the cluster adapter can make
//! a change visible within the test's (generous) deadlines; the measured propagation time is
//! printed (BENCHMARKS.md records it), never asserted. Needs `node` (≥ 20) and
//! `conformance/node_modules`; fails with a hint when missing, never skips.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cluster_support::{wait_for, wait_formed};
use serde_json::{json, Value};
use sockudo_core::app::{AppStore, SqlAppManager};
use sockudo_testkit::client::ApiClient;
use sockudo_testkit::sql::{ScratchDb, SqlServer};
use sockudo_testkit::Cluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const TOKEN: &str = "admin-token-for-the-cluster-test";
const DEADLINE: Duration = Duration::from_secs(20);

/// The pusher-js driver script and its answers.
struct Driver {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Driver {
    async fn start() -> Driver {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance");
        assert!(
            dir.join("node_modules/pusher-js/package.json").exists(),
            "conformance/node_modules is missing: run `cd {} && npm ci --no-audit --no-fund`",
            dir.display()
        );
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("cluster/app_lifecycle.js")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("`node` (≥ 20) is needed to run pusher-js: {e}"));
        Driver {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, cmd: Value) {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    /// The first answer (already seen or to come) that `want` accepts.
    async fn expect(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&want) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + DEADLINE * 2;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no answer for {what}; seen {:?}", self.seen))
                .unwrap()
                .unwrap_or_else(|| panic!("the driver exited waiting for {what}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            if want(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }

    async fn connect(&mut self, id: &str, port: u16, key: &str, secret: &str) -> Value {
        self.send(json!({"cmd": "connect", "id": id, "port": port, "key": key,
            "secret": secret, "channel": format!("private-{id}"), "within_ms": 20_000}))
            .await;
        let r = self
            .expect(&format!("connect {id}"), |v| {
                v["id"] == id && v.get("ok").is_some()
            })
            .await;
        assert_eq!(r["ok"], true, "{id} could not connect: {r}");
        r
    }

    async fn subscribe(&mut self, id: &str, channel: &str, secret: &str) -> bool {
        self.send(json!({"cmd": "subscribe", "id": id, "channel": channel, "secret": secret}))
            .await;
        let r = self
            .expect(&format!("subscribe {id} {channel}"), |v| {
                v["id"] == id && v["channel"] == channel
            })
            .await;
        r["subscribed"] == true
    }
}

async fn admin(
    method: reqwest::Method,
    base: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_changes_through_the_admin_api_reach_every_node() {
    let db = ScratchDb::create(SqlServer::Postgres).await.unwrap();
    // The table exists before three nodes start at once, with the testkit's app in it (the
    // cluster's readiness checks connect with it).
    let direct = SqlAppManager::connect(sockudo_core::app::SqlOptions::new(db.url()))
        .await
        .unwrap();
    direct.create(&sockudo_testkit::test_app()).await.unwrap();
    let url = db.url().to_owned();
    let cluster = Cluster::builder()
        .nodes(3)
        .redis(true)
        .settings(move |_, s| {
            s.apps.clear();
            s.app_manager.driver = "postgres".into();
            s.app_manager.poll_interval = 60;
            s.app_manager.cache_ttl = 600;
            s.database_url = Some(sockudo_server::config::SecretUrl(url.clone()));
            s.admin.port = Some(0);
            s.admin.token = Some(TOKEN.into());
        })
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let a = cluster.node(0).as_in_process().unwrap().node();
    wait_for("node A's admin listener", DEADLINE, || async {
        a.admin_addr()
    })
    .await;
    let admin_a = format!(
        "http://{}",
        cluster
            .node(0)
            .as_in_process()
            .unwrap()
            .node()
            .admin_addr()
            .unwrap()
    );
    let ports: Vec<u16> = (0..3).map(|i| cluster.node(i).addr().port()).collect();

    // The admin API's own rules.
    let r = reqwest::Client::new()
        .get(format!("{admin_a}/apps"))
        .bearer_auth("wrong-token-wrong-token-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = admin(
        reqwest::Method::POST,
        &admin_a,
        "/apps",
        Some(json!({"max_event_batch_size": 0})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_event_batch_size"),
        "{body}"
    );

    // Create on A → pusher-js connects on C. Node C is asked for the key first, so it
    // remembers it as unknown (for the 60 s poll interval): only the invalidation clears that.
    let key = format!("created-{:08x}", rand::random::<u32>());
    let early = sockudo_testkit::TestClient::connect(&cluster.node(2).ws_url(&key)).await;
    assert!(
        early
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("4001")),
        "unknown key before creation: {:?}",
        early.map(|_| ())
    );
    let (status, app) = admin(
        reqwest::Method::POST,
        &admin_a,
        "/apps",
        Some(json!({"key": key, "enable_client_messages": true})),
    )
    .await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["cluster_notified"], true, "{app}");
    let (id, key, secret) = (
        app["id"].as_str().unwrap().to_owned(),
        app["key"].as_str().unwrap().to_owned(),
        app["secret"].as_str().unwrap().to_owned(),
    );
    let mut js = Driver::start().await;
    let r = js.connect("c", ports[2], &key, &secret).await;
    println!(
        "created on node A, pusher-js connected and subscribed on node C after {} ms ({} attempts)",
        r["elapsed_ms"], r["attempts"]
    );
    js.connect("a", ports[0], &key, &secret).await;
    js.connect("b", ports[1], &key, &secret).await;

    let new_secret =
        rotation_reaches_every_node(&mut js, &cluster, &admin_a, &id, &key, &secret).await;
    let r = js.connect("c2", ports[2], &key, &new_secret).await;
    assert_eq!(r["ok"], true);
    disable_closes_every_node(&mut js, &cluster, &admin_a, &id, &key).await;

    // Delete: gone for the admin API and the nodes.
    let (status, _) = admin(
        reqwest::Method::DELETE,
        &admin_a,
        &format!("/apps/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = admin(reqwest::Method::GET, &admin_a, &format!("/apps/{id}"), None).await;
    assert_eq!(
        (status, body["status"].clone()),
        (404, json!(404)),
        "{body}"
    );
}

/// Rotate the secret on node A: on every node the old signature is refused (eventually: only
/// the adapter invalidation can tell them) and the new one accepted, by pusher-js
/// subscriptions and by the HTTP API. Returns the new secret.
async fn rotation_reaches_every_node(
    js: &mut Driver,
    cluster: &Cluster,
    admin_a: &str,
    id: &str,
    key: &str,
    secret: &str,
) -> String {
    // Rotate on A → old signatures refused everywhere, new ones accepted.
    let (status, rotated) = admin(
        reqwest::Method::POST,
        admin_a,
        &format!("/apps/{id}/secret"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    for (n, client) in ["a", "b", "c"].into_iter().enumerate() {
        let mut round = 0;
        loop {
            round += 1;
            let refused = !js
                .subscribe(client, &format!("private-old-{client}-{round}"), secret)
                .await;
            if refused {
                break;
            }
            assert!(round < 100, "node {n} still accepts the old secret");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            js.subscribe(client, &format!("private-new-{client}"), &new_secret)
                .await,
            "node {n} refuses the new secret"
        );
        let old_api = ApiClient::new(&cluster.node(n).http_url(), id, key, secret);
        let new_api = ApiClient::new(&cluster.node(n).http_url(), id, key, &new_secret);
        assert_eq!(
            old_api.get("/channels", &[]).await.unwrap().0,
            401,
            "node {n}: old secret"
        );
        assert_eq!(
            new_api.get("/channels", &[]).await.unwrap().0,
            200,
            "node {n}: new secret"
        );
    }
    new_secret
}

/// Disable the app on node A: the pusher-js clients on every node are closed with 4003 and a
/// new connection is refused with 4003.
async fn disable_closes_every_node(
    js: &mut Driver,
    cluster: &Cluster,
    admin_a: &str,
    id: &str,
    key: &str,
) {
    // Disable on A → the connections close on every node with 4003.
    let (status, body) = admin(
        reqwest::Method::PATCH,
        admin_a,
        &format!("/apps/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for client in ["a", "b", "c", "c2"] {
        let closed = js
            .expect(&format!("{client} closed"), |v| {
                v["id"] == client && v["event"] == "closed"
            })
            .await;
        assert_eq!(closed["code"], 4003, "{client}: {closed}");
    }
    let refused = wait_for("a new connection refused", DEADLINE, || {
        let url = cluster.node(1).ws_url(key);
        async move { sockudo_testkit::TestClient::connect(&url).await.err() }
    })
    .await;
    assert!(refused.to_string().contains("4003"), "{refused}");
}
