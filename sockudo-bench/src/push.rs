//! `--mode push`: push notifications end to end over Redis, against a fake FCM served by
//! this tool (OAuth2 token + `messages:send`, answering at once).
//!
//! `redis-server` and `--push-nodes` `sockudo` nodes (binary built with `--features push`)
//! with `QUEUE_DRIVER=redis` and FCM pointed at the fake. `--push-devices` FCM devices are
//! registered and subscribed to one channel through the signed API (spread over the nodes).
//! 1. **Admission**: `--push-publishes` publishes to one device each, scheduled an hour ahead
//!    (`notBeforeMs`) so the burst measures admission alone, sent round-robin to the nodes
//!    with `--push-concurrency` in flight: publishes/s accepted and the 202 latency.
//! 2. **Dispatch**: one publish to the channel; time from its 202 to a terminal status (polled
//!    every 20 ms): notifications/s, and the fake provider's count of distinct tokens and of
//!    duplicates (must be 0).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::Api;
use crate::cli::Args;
use crate::histogram::Histogram;
use crate::procs;

fn progress(msg: &str) {
    eprintln!("[push] {msg}");
}

/// Sends per token seen by the fake FCM.
type Hits = Arc<Mutex<HashMap<String, u32>>>;

/// Serve the fake FCM on a free port; returns its port.
async fn fake_fcm(hits: Hits) -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = Arc::clone(&hits);
                    async move {
                        let is_token = req.uri().path() == "/token";
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let answer = if is_token {
                            json!({"access_token": "bench", "expires_in": 3600})
                        } else {
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let token = v["message"]["token"].as_str().unwrap_or("").to_owned();
                            if let Ok(mut h) = hits.lock() {
                                *h.entry(token).or_default() += 1;
                            }
                            json!({"name": "m"})
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

/// A service-account file for the fake (a fresh RSA key from `openssl`).
fn service_account(dir: &std::path::Path, fcm_port: u16) -> Result<std::path::PathBuf, String> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .map_err(|e| format!("openssl (needed for the service-account key): {e}"))?;
    let pem = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let account = json!({
        "type": "service_account", "project_id": "bench", "private_key": pem,
        "client_email": "bench@bench.invalid", "token_uri": format!("http://127.0.0.1:{fcm_port}/token"),
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string()).map_err(|e| e.to_string())?;
    Ok(path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run `n` signed calls built by `make` with `conc` in flight; every answer must be `want`.
async fn burst(
    api: &Api,
    bases: &[String],
    n: usize,
    conc: usize,
    want: u16,
    make: impl Fn(usize) -> (&'static str, String, Vec<u8>),
    latency: Option<&Histogram>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (method, path, body) = make(i);
            let base = bases[i % bases.len()].clone();
            async move {
                let t = Instant::now();
                let (status, resp) = api.call(&base, method, &path, body).await?;
                if let Some(h) = latency {
                    h.record(t.elapsed().as_nanos() as u64);
                }
                if status != want {
                    return Err(format!(
                        "{method} {path}: {status} {}",
                        String::from_utf8_lossy(&resp)
                    ));
                }
                Ok(())
            }
        })
        .buffer_unordered(conc.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(started.elapsed())
}

pub async fn run(args: &Args) -> Result<String, String> {
    let bin = procs::sockudo_bin(None)?;
    let dir = procs::scratch_dir()?;
    let redis = procs::start_redis(&dir).await?;
    let redis_url = format!("redis://{}", redis.addr());
    let hits: Hits = Arc::default();
    let fcm_port = fake_fcm(Arc::clone(&hits)).await?;
    let account = service_account(&dir, fcm_port)?;
    let mut env = procs::cluster_env(&redis_url);
    for (k, v) in [
        ("QUEUE_DRIVER", "redis".to_owned()),
        ("PUSH_ENABLED", "true".to_owned()),
        (
            "PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH",
            account.display().to_string(),
        ),
        ("PUSH_FCM_ENDPOINT", format!("http://127.0.0.1:{fcm_port}")),
        ("SOCKUDO_DEFAULT_APP_ID", args.app_id.clone()),
        ("SOCKUDO_DEFAULT_APP_KEY", args.key.clone()),
        ("SOCKUDO_DEFAULT_APP_SECRET", args.secret.clone()),
    ] {
        env.push((k.to_owned(), v));
    }
    let mut nodes = Vec::new();
    for i in 0..args.push_nodes.max(1) {
        nodes.push(procs::start_node(&bin, &dir, &format!("push-{i}"), &env, None).await?);
    }
    let bases: Vec<String> = nodes.iter().map(procs::Proc::http_url).collect();
    let api = Api::new(
        &args.app_id,
        &args.key,
        &args.secret,
        args.push_concurrency.max(1),
    );
    let p = format!("/apps/{}/push", api.app_id());
    let (d, conc) = (args.push_devices, args.push_concurrency);
    progress(&format!("{} node(s); registering {d} devices", bases.len()));
    burst(
        &api,
        &bases,
        d,
        conc,
        201,
        |i| {
            let body = json!({"id": format!("d{i}"), "formFactor": "phone", "platform": "android",
            "push": {"recipient": {"transportType": "gcm", "registrationToken": format!("t{i}")}}});
            (
                "POST",
                format!("{p}/deviceRegistrations"),
                body.to_string().into_bytes(),
            )
        },
        None,
    )
    .await?;
    burst(
        &api,
        &bases,
        d,
        conc,
        201,
        |i| {
            (
                "POST",
                format!("{p}/channelSubscriptions"),
                json!({"channel": "all", "deviceId": format!("d{i}")})
                    .to_string()
                    .into_bytes(),
            )
        },
        None,
    )
    .await?;

    let n = args.push_publishes;
    progress(&format!("admission: {n} publishes, {conc} in flight"));
    let later = now_ms() + 3_600_000;
    let latency = Histogram::new();
    let took = burst(&api, &bases, n, conc, 202, |i| {
        let body = json!({"recipients": [{"type": "device", "deviceId": format!("d{}", i % d.max(1))}],
            "payload": {"title": "bench"}, "notBeforeMs": later});
        ("POST", format!("{p}/publish"), body.to_string().into_bytes())
    }, Some(&latency))
    .await?;
    let snap = latency.snapshot();
    let ms = |ns: u64| ns as f64 / 1e6;

    progress("dispatch: one channel publish to every device");
    let start = Instant::now();
    let body =
        json!({"recipients": [{"type": "channel", "channel": "all"}], "payload": {"title": "all"}});
    let (status, resp) = api
        .call(
            &bases[0],
            "POST",
            &format!("{p}/publish"),
            body.to_string().into_bytes(),
        )
        .await?;
    if status != 202 {
        return Err(format!(
            "channel publish: {status} {}",
            String::from_utf8_lossy(&resp)
        ));
    }
    let pid = serde_json::from_slice::<Value>(&resp).map_err(|e| e.to_string())?["publishId"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let status = loop {
        let (_, st) = api
            .call(
                &bases[0],
                "GET",
                &format!("{p}/publish/{pid}/status"),
                Vec::new(),
            )
            .await?;
        let st: Value = serde_json::from_slice(&st).unwrap_or(Value::Null);
        if !matches!(
            st["state"].as_str(),
            Some("queued" | "planning" | "dispatching" | "throttled")
        ) {
            break st;
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("the campaign did not finish in 10 min: {st}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dispatch = start.elapsed();
    let (distinct, dups) = {
        let h = hits.lock().map_err(|_| "poisoned".to_string())?;
        (h.len(), h.values().filter(|v| **v > 1).count())
    };
    Ok(format!(
        "push: {nodes} node(s), {d} devices, load {load}\n\
         admission: {n} publishes in {adm:.2} s = {rate:.0} publishes/s; 202 latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms\n\
         dispatch: {d} devices in {disp:.2} s = {nps:.0} notifications/s; state {state}; provider saw {distinct} distinct tokens, {dups} duplicates\n",
        nodes = bases.len(),
        load = procs::loadavg(),
        adm = took.as_secs_f64(),
        rate = n as f64 / took.as_secs_f64(),
        p50 = ms(snap.quantile(0.5)),
        p99 = ms(snap.quantile(0.99)),
        max = ms(snap.max()),
        disp = dispatch.as_secs_f64(),
        nps = d as f64 / dispatch.as_secs_f64(),
        state = status["state"],
    ))
}
