//! Push on a 2-node cluster sharing Redis (server feature `push`): node 0 is killed in the
//! middle of a 1,000-device channel campaign; node 1 finishes it after the lease, and no
//! device is notified twice (a wiremock FCM counts every token).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::HashMap;
use std::time::Duration;

use cluster_support::wait_for;
use serde_json::{json, Value};
use sockudo_testkit::{ApiClient, Cluster, APP_ID, APP_KEY, APP_SECRET};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SEND: &str = "/v1/projects/cluster-proj/messages:send";
const N: usize = 1000;

/// A service-account file for `token_uri`, with a fresh RSA key (`openssl`).
fn service_account(dir: &std::path::Path, token_uri: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl must be on PATH");
    let account = json!({
        "type": "service_account", "project_id": "cluster-proj",
        "private_key": String::from_utf8(out.stdout).unwrap(),
        "client_email": "push@cluster-proj.example.invalid", "token_uri": token_uri,
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, account.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

async fn sends(fcm: &MockServer) -> Vec<String> {
    let reqs = fcm.received_requests().await.unwrap_or_default();
    reqs.iter()
        .filter(|r| r.url.path() == SEND)
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["message"]["token"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_leaves_its_campaign_to_another_without_duplicates() {
    let fcm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 3600})),
        )
        .mount(&fcm)
        .await;
    Mock::given(method("POST"))
        .and(path(SEND))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"name": "m"}))
                .set_delay(Duration::from_millis(20)),
        )
        .mount(&fcm)
        .await;
    let dir = std::env::temp_dir().join(format!("cluster-push-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let account = service_account(&dir, &format!("{}/token", fcm.uri()));
    let endpoint = fcm.uri();
    let mut cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .settings(move |_, s| {
            s.queue.driver = "redis".into();
            s.push.enabled = true;
            s.push.fcm_service_account_json_path = account.clone();
            s.push.fcm_endpoint = endpoint.clone();
            s.push.shard_size = 50;
            s.push.dispatch_concurrency = 4;
            s.push.lease_secs = 3;
        })
        .build()
        .await
        .unwrap();
    let api0 = ApiClient::new(&cluster.node(0).http_url(), APP_ID, APP_KEY, APP_SECRET);
    let api1 = api0.with_base(&cluster.node(1).http_url());
    for i in 0..N {
        let id = format!("d{i:04}");
        let device = json!({"id": id, "formFactor": "phone", "platform": "android",
            "push": {"recipient": {"transportType": "gcm", "registrationToken": format!("t{i:04}")}}});
        assert_eq!(
            api0.post("/push/deviceRegistrations", &device)
                .await
                .unwrap()
                .0,
            201
        );
        let sub = json!({"channel": "all", "deviceId": id});
        assert_eq!(
            api1.post("/push/channelSubscriptions", &sub)
                .await
                .unwrap()
                .0,
            201
        );
    }
    let publish = json!({"publishId": "cluster-1", "recipients": [{"type": "channel", "channel": "all"}], "payload": {"title": "t"}});
    let (status, body) = api0.post("/push/publish", &publish).await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_for(
        "the campaign to be under way",
        Duration::from_secs(60),
        || async { (sends(&fcm).await.len() >= 150).then_some(()) },
    )
    .await;
    cluster.node_mut(0).kill().unwrap();
    let st: Value = wait_for(
        "node 1 to finish the campaign",
        Duration::from_secs(120),
        || async {
            let (_, st) = api1.get("/push/publish/cluster-1/status", &[]).await.ok()?;
            let done = !matches!(
                st["state"].as_str(),
                Some("queued" | "planning" | "dispatching" | "throttled")
            );
            done.then_some(st)
        },
    )
    .await;
    let c = &st["counters"];
    let (ok, failed) = (
        c["succeeded"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    );
    assert_eq!(
        (c["planned"].as_u64(), ok + failed),
        (Some(N as u64), N as u64),
        "{st}"
    );
    assert!(
        failed <= 16,
        "only what node 0 was sending has an unknown outcome: {st}"
    );
    let mut hits: HashMap<String, usize> = HashMap::new();
    for t in sends(&fcm).await {
        *hits.entry(t).or_default() += 1;
    }
    assert!(hits.values().all(|n| *n == 1), "a device notified twice");
    assert!(hits.len() as u64 >= ok);
    let _ = std::fs::remove_dir_all(&dir);
}
