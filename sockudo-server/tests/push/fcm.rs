//! FCM HTTP v1 against wiremock: the OAuth2 token exchange (RS256 service-account JWT,
//! verified here) and the send endpoint; 10,000 devices exactly once, 429 + Retry-After,
//! UNREGISTERED, the breaker, dead letters and replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::Verifier;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::*;

const KEY_PEM: &str = include_str!("fixtures/fcm-test-key.pem");
const SEND: &str = "/v1/projects/test-proj/messages:send";

/// A line of the service account's private key (must never be shown anywhere).
pub fn key_body_line() -> String {
    KEY_PEM.lines().nth(3).unwrap().to_owned()
}

/// A wiremock FCM (token + send, sends answer 200) and the service-account file for it.
pub struct FakeFcm {
    pub server: MockServer,
    account: TempFile,
}

impl FakeFcm {
    pub async fn start() -> FakeFcm {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "tok-1", "expires_in": 3600, "token_type": "Bearer"}),
            ))
            .mount(&server)
            .await;
        let account = json!({
            "type": "service_account", "project_id": "test-proj", "private_key": KEY_PEM,
            "client_email": "push@test-proj.iam.example.invalid", "token_uri": format!("{}/token", server.uri()),
        });
        FakeFcm {
            server,
            account: TempFile::with("sa.json", &account.to_string()),
        }
    }

    pub async fn ok_sends(&self) {
        Mock::given(method("POST"))
            .and(path(SEND))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"name": "projects/test-proj/messages/1"})),
            )
            .mount(&self.server)
            .await;
    }

    /// Node settings using this FCM.
    pub fn configure(&self, s: &mut sockudo_server::config::NodeSettings) {
        s.push.fcm_service_account_json_path = self.account.path_str();
        s.push.fcm_endpoint = self.server.uri();
    }

    pub async fn sends(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == SEND)
            .collect()
    }

    pub async fn token_requests(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/token")
            .collect()
    }
}

/// Answers `down` while the flag is set, then 200.
struct Switch {
    down: Arc<AtomicBool>,
    answer: u16,
}

impl Respond for Switch {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.down.load(Ordering::SeqCst) {
            ResponseTemplate::new(self.answer)
        } else {
            ResponseTemplate::new(200)
                .set_body_json(json!({"name": "projects/test-proj/messages/2"}))
        }
    }
}

/// Mount a send endpoint that is down (answering `answer`) until the returned flag is cleared.
async fn switchable(fcm: &FakeFcm, answer: u16) -> Arc<AtomicBool> {
    let down = Arc::new(AtomicBool::new(true));
    Mock::given(method("POST"))
        .and(path(SEND))
        .respond_with(Switch {
            down: Arc::clone(&down),
            answer,
        })
        .mount(&fcm.server)
        .await;
    down
}

fn token_of(r: &Request) -> String {
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["message"]["token"].as_str().unwrap().to_owned()
}

fn gcm(token: &str) -> Value {
    json!({"transportType": "gcm", "registrationToken": token})
}

/// The token request carries an RS256 JWT signed by the service account's key.
fn check_assertion(r: &Request, token_uri: &str) {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&r.body).into_owned().collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let jwt = &form["assertion"];
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
    assert_eq!(claims["iss"], "push@test-proj.iam.example.invalid");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(claims["aud"], token_uri);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_PEM).unwrap();
    let verifier = VerifyingKey::<sha2::Sha256>::new(key.to_public_key());
    let sig = Signature::try_from(unb64(parts[2]).as_slice()).unwrap();
    verifier
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("the assertion is signed by the account key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_10000_device_channel_push_hits_every_device_exactly_once() {
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let node = PushNode::on(Backend::Memory, None, |s| fcm.configure(s)).await;
    let api = node.api();
    const N: usize = 10_000;
    futures_util::stream::iter(0..N)
        .map(|i| {
            let api = api.clone();
            async move {
                let id = format!("dev-{i:05}");
                api.register(&id, None, gcm(&format!("tok-{i:05}"))).await;
                let (status, body) = api
                    .post(
                        "/channelSubscriptions",
                        &json!({"channel": "everyone", "deviceId": id}),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let pid = api.publish(&json!({"recipients": [{"type": "channel", "channel": "everyone"}], "payload": {"title": "Hi", "body": "all of you", "data": {"n": 1}}})).await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["counters"]["planned"], N);
    assert_eq!(st["counters"]["succeeded"], N);
    let sends = fcm.sends().await;
    let mut hits: HashMap<String, usize> = HashMap::new();
    for r in &sends {
        assert_eq!(r.headers.get("authorization").unwrap(), "Bearer tok-1");
        *hits.entry(token_of(r)).or_default() += 1;
    }
    assert_eq!(hits.len(), N, "every device reached");
    assert!(hits.values().all(|n| *n == 1), "no device notified twice");
    let body: Value = serde_json::from_slice(&sends[0].body).unwrap();
    assert_eq!(
        body["message"]["notification"],
        json!({"title": "Hi", "body": "all of you"})
    );
    assert_eq!(
        body["message"]["data"],
        json!({"n": "1"}),
        "FCM data values are strings"
    );
    let tokens = fcm.token_requests().await;
    assert_eq!(tokens.len(), 1, "the access token is cached");
    check_assertion(&tokens[0], &format!("{}/token", fcm.server.uri()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_429_with_retry_after_is_retried_and_nothing_is_lost() {
    let fcm = FakeFcm::start().await;
    Mock::given(method("POST"))
        .and(path(SEND))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(20)
        .with_priority(1)
        .mount(&fcm.server)
        .await;
    fcm.ok_sends().await;
    let node = PushNode::on(Backend::Memory, None, |s| fcm.configure(s)).await;
    let api = node.api();
    let mut recipients = Vec::new();
    for i in 0..50 {
        api.register(&format!("d{i}"), None, gcm(&format!("t{i}")))
            .await;
        recipients.push(json!({"type": "device", "deviceId": format!("d{i}")}));
    }
    let (status, accepted) = api
        .post(
            "/publish",
            &json!({"recipients": recipients, "payload": {"title": "x"}}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(accepted["expectedRecipients"], 50);
    let pid = accepted["publishId"].as_str().unwrap();
    let st = api.wait_terminal(pid).await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["counters"]["succeeded"], 50);
    assert_eq!(
        st["counters"]["retryScheduled"], 20,
        "each throttled device retried once"
    );
    assert_eq!(st["counters"]["dispatched"], 70);
    assert_eq!(fcm.sends().await.len(), 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_removes_the_device() {
    let fcm = FakeFcm::start().await;
    Mock::given(method("POST"))
        .and(path(SEND))
        .and(body_string_contains("dead-token"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}})))
        .with_priority(1)
        .mount(&fcm.server)
        .await;
    fcm.ok_sends().await;
    let node = PushNode::on(Backend::Memory, None, |s| fcm.configure(s)).await;
    let api = node.api();
    api.register("live", Some("u1"), gcm("live-token")).await;
    api.register("gone", Some("u1"), gcm("dead-token")).await;
    let pid = api.publish(&json!({"recipients": [{"type": "client", "clientId": "u1"}], "payload": {"body": "b"}})).await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "partiallySucceeded", "{st}");
    assert_eq!(
        (
            st["counters"]["succeeded"].as_i64(),
            st["counters"]["failed"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert!(st["errorReason"].is_string());
    let (status, _) = api.get("/deviceRegistrations/gone", &[]).await;
    assert_eq!(status, 404, "the invalid registration is removed");
    let (status, _) = api.get("/deviceRegistrations/live", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_trips_the_breaker_and_delivery_recovers() {
    let fcm = FakeFcm::start().await;
    let down = switchable(&fcm, 503).await;
    let node = PushNode::on(Backend::Memory, None, |s| {
        fcm.configure(s);
        s.push.shard_size = 10;
    })
    .await;
    let api = node.api();
    let mut recipients = Vec::new();
    for i in 0..30 {
        api.register(&format!("d{i}"), None, gcm(&format!("t{i}")))
            .await;
        recipients.push(json!({"type": "device", "deviceId": format!("d{i}")}));
    }
    let pid = api
        .publish(&json!({"recipients": recipients, "payload": {"title": "x"}}))
        .await;
    let push = node.node.push().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !push.breaker_open("fcm", APP_ID) {
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    down.store(false, Ordering::SeqCst); // the provider is back
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["counters"]["succeeded"], 30);
    assert_eq!(st["counters"]["deadLettered"], 0);
    assert!(!push.breaker_open("fcm", APP_ID), "a success closes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_and_replayable() {
    let fcm = FakeFcm::start().await;
    let down = switchable(&fcm, 500).await;
    let node = PushNode::on(Backend::Memory, None, |s| {
        fcm.configure(s);
        s.push.retry_max_attempts = 2;
    })
    .await;
    let api = node.api();
    api.register("d1", None, gcm("t1")).await;
    let pid = api.publish(&json!({"recipients": [{"type": "device", "deviceId": "d1"}], "payload": {"title": "x"}})).await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "deadLettered", "{st}");
    assert_eq!(st["counters"]["deadLettered"], 1);
    let (status, list) = api.get("/deadLetters", &[("provider", "fcm")]).await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["publishId"], pid.as_str());
    assert_eq!(items[0]["deviceId"], "d1");
    assert_eq!(items[0]["attempts"], 2);
    assert_eq!(items[0]["replayable"], true);
    let (_, none) = api.get("/deadLetters", &[("provider", "apns")]).await;
    assert_eq!(none["items"], json!([]));
    down.store(false, Ordering::SeqCst);
    let id = items[0]["deadLetterId"].as_str().unwrap();
    let (status, body) = api
        .post(&format!("/deadLetters/{id}/replay"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(
        (
            st["counters"]["succeeded"].as_i64(),
            st["counters"]["deadLettered"].as_i64()
        ),
        (Some(1), Some(0))
    );
    let (status, _) = api
        .post(&format!("/deadLetters/{id}/replay"), &json!({}))
        .await;
    assert_eq!(status, 404, "a dead letter is replayed once");
    assert_eq!(fcm.sends().await.len(), 3);
}
