//! End-to-end check of the `sockudo-bench` binary against a minimal in-test Pusher node.
//!
//! The mock speaks just enough protocol 7 (connection_established, subscribe →
//! subscription_succeeded, broadcast of HTTP-published events, one `pusher:ping`) and checks that
//! publishes carry the signed-query parameters; it does not verify the signature itself (that is
//! sockudo-core's job). The bench's JSON report must then show every in-window message delivered.

// Test-only mock helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

type Hub = broadcast::Sender<(String, String)>;

async fn ws_conn(stream: tokio::net::TcpStream, hub: Hub) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let established = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#;
    if ws.send(Message::text(established)).await.is_err() {
        return;
    }
    let mut rx = hub.subscribe();
    let mut channel = None::<String>;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Message::Text(t))) = msg else { return };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["event"] == "pusher:subscribe" {
                    let ch = v["data"]["channel"].as_str().unwrap().to_string();
                    let ok = serde_json::json!({"event":"pusher_internal:subscription_succeeded","channel":ch,"data":"{}"});
                    ws.send(Message::text(ok.to_string())).await.unwrap();
                    // Exercise the bench's pusher:ping handling once.
                    ws.send(Message::text(r#"{"event":"pusher:ping","data":"{}"}"#)).await.unwrap();
                    channel = Some(ch);
                }
            }
            ev = rx.recv() => {
                let Ok((ch, frame)) = ev else { continue };
                if channel.as_deref() == Some(ch.as_str()) && ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn publish(req: Request<Incoming>, hub: Hub) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let path_ok = req.uri().path() == "/apps/app-id/events";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let signed = [
        "auth_key=app-key",
        "auth_timestamp=",
        "auth_version=1.0",
        "body_md5=",
        "auth_signature=",
    ]
    .iter()
    .all(|p| query.contains(p));
    if !path_ok || !signed {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"unsigned\"}")));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ch = v["channel"].as_str().unwrap().to_string();
    let frame =
        serde_json::json!({"event": v["name"], "channel": ch, "data": v["data"]}).to_string();
    let _ = hub.send((ch, frame));
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

async fn start_mock() -> (SocketAddr, SocketAddr) {
    let (hub, _) = broadcast::channel(4096);
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (ws.local_addr().unwrap(), http.local_addr().unwrap());
    let ws_hub: Hub = hub.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = ws.accept().await {
            tokio::spawn(ws_conn(s, ws_hub.clone()));
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            let hub = hub.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| publish(req, hub.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addrs
}

fn run_bench(args: &[String]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sockudo-bench"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_counts_every_delivery() {
    let (ws, http) = start_mock().await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{ws}"),
        "--http",
        &format!("http://{http}"),
        "--connections",
        "30",
        "--channels",
        "3",
        "--rate",
        "40",
        "--publishers",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--idle",
        "0.1",
        "--payload-bytes",
        "200",
        "--server-pid",
        &std::process::id().to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = tokio::task::spawn_blocking(move || run_bench(&args))
        .await
        .unwrap();

    assert_eq!(report["connect"]["connected"], 30, "{report:#}");
    assert_eq!(report["connect"]["failed"], 0);
    assert!(report["connect"]["setup_rate_per_s"].as_f64().unwrap() > 0.0);
    let p = &report["publish"];
    assert_eq!(p["non_200"], 0, "{report:#}");
    assert_eq!(p["transport_errors"], 0);
    assert!(p["sent"].as_u64().unwrap() >= 40, "{report:#}");
    let d = &report["delivery"];
    // ~40 in-window publishes, each to one channel of 10 subscribers.
    let expected = d["expected"].as_u64().unwrap();
    assert!((300..=500).contains(&expected), "{report:#}");
    assert_eq!(d["received"], expected);
    assert_eq!(d["lost"], 0);
    assert_eq!(d["pings_answered"], 30);
    assert_eq!(d["latency_ms"]["count"], expected);
    assert!(d["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["memory"]["server_rss_idle_kib"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_only_mode_reports_setup() {
    let (ws, _) = start_mock().await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{ws}"),
        "--mode",
        "connect-only",
        "--connections",
        "20",
        "--idle",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = tokio::task::spawn_blocking(move || run_bench(&args))
        .await
        .unwrap();
    assert_eq!(report["mode"], "connect-only");
    assert_eq!(report["connect"]["connected"], 20);
    assert!(report["publish"].is_null());
    assert!(report["delivery"].is_null());
}
