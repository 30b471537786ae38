//! The README's mount recipe with the official SDKs, unmodified: the example app serves
//! Sockudo under `/realtime`; pusher-js 8.6.0 connects with `wsPath: '/realtime'`, and the
//! `pusher` 5.3.4 Node SDK (which has no path option) is given the app's host and port only.
//! The SDK reads a channel's info and publishes; pusher-js must receive the event
//! (conformance/mount/sdk_publish.js).
//!
//! Needs `node` (≥ 20) and `conformance/node_modules` (`cd conformance && npm ci`): without
//! them the test fails with that hint, it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sockudo_testkit::{test_app, test_settings, APP_ID, APP_KEY, APP_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_node_sdk_publishes_through_the_mount_and_pusher_js_receives() {
    let conformance = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance");
    assert!(
        conformance
            .join("node_modules/pusher/package.json")
            .exists()
            && conformance
                .join("node_modules/pusher-js/package.json")
                .exists(),
        "conformance/node_modules is missing: run `cd {} && npm ci --no-audit --no-fund`",
        conformance.display()
    );
    let node = sockudo_server::build_node_memory(test_settings(vec![test_app()]));
    let app = axum_mount::app(std::sync::Arc::clone(&node));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    node.mark_serving();
    tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });

    let run = tokio::process::Command::new("node")
        .current_dir(&conformance)
        .arg("mount/sdk_publish.js")
        .args([
            &port.to_string(),
            APP_ID,
            APP_KEY,
            APP_SECRET,
            "mounted-news",
        ])
        .kill_on_drop(true)
        .output();
    // Only a bound on a hung child: the script gives up by itself after 20 s.
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the node script hung")
        .unwrap_or_else(|e| panic!("`node` (≥ 20) could not be started: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sdk_publish.js failed: {stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {stderr}", out.stdout));
    assert_eq!(answer["trigger_status"], 200, "{answer}");
    assert_eq!(answer["channel_info"]["subscription_count"], 1, "{answer}");
    assert_eq!(
        answer["received"],
        json!({ "hello": "mount", "n": 1 }),
        "{answer}"
    );
}
