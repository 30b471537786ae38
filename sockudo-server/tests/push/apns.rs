//! APNs over HTTP/2 against an h2c (prior knowledge) hyper server: path, headers, the ES256
//! provider token verified with the `.p8` key's public half, the body, and 410 removing the
//! registration. (Real APNs is `https://` with ALPN h2: the `webhooks-tls` build feature.)

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};

use crate::harness::*;

const P8: &str = include_str!("fixtures/apns-test-key.p8");

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    version: hyper::Version,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

/// An HTTP/2 cleartext server answering 200, or 410 for `dead-token`; what it received.
async fn fake_apns() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        let path = parts.uri.path().to_owned();
                        log.lock().unwrap().push(Seen {
                            path: path.clone(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        });
                        let resp = if path.ends_with("/dead-token") {
                            Response::builder()
                                .status(410)
                                .body(Full::new(Bytes::from(r#"{"reason":"Unregistered"}"#)))
                        } else {
                            Response::builder()
                                .status(200)
                                .header("apns-id", "x")
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_over_http2_with_a_verified_provider_token() {
    let (endpoint, seen) = fake_apns().await;
    let key = TempFile::with("AuthKey_KEY123.p8", P8);
    let node = PushNode::on(Backend::Memory, None, |s| {
        s.push.apns_private_key_path = key.path_str();
        s.push.apns_team_id = "TEAM123".into();
        s.push.apns_key_id = "KEY123".into();
        s.push.apns_topic = "com.example.app".into();
        s.push.apns_endpoint = endpoint.clone();
    })
    .await;
    let api = node.api();
    api.register(
        "i1",
        Some("u"),
        json!({"transportType": "apns", "deviceToken": "good-token"}),
    )
    .await;
    api.register(
        "i2",
        Some("u"),
        json!({"transportType": "apns", "deviceToken": "dead-token"}),
    )
    .await;
    let pid = api
        .publish(&json!({
            "recipients": [{"type": "client", "clientId": "u"}],
            "payload": {"title": "T", "body": "B", "sound": "ping.aiff", "collapseKey": "c1", "data": {"x": 1}},
            "providerOverrides": [{"provider": "apns", "payload": {"extra": true}}],
        }))
        .await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(st["state"], "partiallySucceeded", "{st}");
    let (status, _) = api.get("/deviceRegistrations/i2", &[]).await;
    assert_eq!(status, 404, "410 removes the registration");
    let seen = seen.lock().unwrap().clone();
    let good = seen
        .iter()
        .find(|s| s.path == "/3/device/good-token")
        .expect("sent to the device");
    assert_eq!(good.version, hyper::Version::HTTP_2);
    let h = |n: &str| good.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("apns-topic").as_deref(), Some("com.example.app"));
    assert_eq!(h("apns-push-type").as_deref(), Some("alert"));
    assert_eq!(h("apns-priority").as_deref(), Some("10"));
    assert_eq!(h("apns-collapse-id").as_deref(), Some("c1"));
    assert!(h("apns-expiration").is_some());
    let body: Value = serde_json::from_slice(&good.body).unwrap();
    assert_eq!(
        body,
        json!({"aps": {"alert": {"title": "T", "body": "B"}, "sound": "ping.aiff"}, "x": 1, "extra": true})
    );
    let bearer = h("authorization").unwrap();
    let jwt = bearer.strip_prefix("bearer ").unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let header: Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
    assert_eq!(header, json!({"alg": "ES256", "kid": "KEY123"}));
    let claims: Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
    assert_eq!(claims["iss"], "TEAM123");
    assert!(claims["iat"].as_u64().is_some());
    let verifying = *p256::ecdsa::SigningKey::from_pkcs8_pem(P8)
        .unwrap()
        .verifying_key();
    let sig = p256::ecdsa::Signature::from_slice(&unb64(parts[2])).unwrap();
    verifying
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("signed with the .p8 key");
}
