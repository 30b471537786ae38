//! The real `sockudo-python` 2.2 client (PyPI, pinned in conformance/python) resuming on
//! another node after its node is killed: it sends `sockudo:resume` before its subscribes,
//! and must get exactly the messages it missed, in order, then live ones.
//!
//! Needs the client's virtualenv: `.ci/run` creates it (`$HOME/.cache/sockudo-pyenv`, or
//! `SOCKUDO_PYTHON` naming its interpreter). Without it this test fails with that hint; it
//! never skips.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cluster_support::redis_cluster;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CHANNEL: &str = "py-feed";
const TOTAL: u64 = 60;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKUDO_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/sockudo-pyenv/bin/python")
}

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/python/resume_client.py")
}

/// Read the harness's JSON lines until `until` matches one (returns it), collecting events.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: &mut Vec<Value>,
    what: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; lines so far: {log:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("harness exited before {what}; lines: {log:#?}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        log.push(v.clone());
        if until(&v) {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockudo_python_resumes_on_another_node_after_a_crash() {
    let py = python();
    assert!(
        py.exists(),
        "the sockudo-python virtualenv is missing ({}): create it with `python3 -m venv \
         $HOME/.cache/sockudo-pyenv && $HOME/.cache/sockudo-pyenv/bin/pip install -r \
         conformance/python/requirements.txt` (.ci/run does this)",
        py.display()
    );
    let mut cluster = redis_cluster(2).await;
    let key = cluster.app().key.clone();
    let addr = |i: usize| cluster.node(i).addr().to_string();
    let mut child = Command::new(&py)
        .arg(harness())
        .args(["--url", &addr(0), "--url", &addr(1), "--key", &key])
        .args(["--channel", CHANNEL, "--count", &TOTAL.to_string()])
        .args(["--deadline", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    read_until(&mut lines, &mut log, "the subscription", |v| {
        v["type"] == "subscribed"
    })
    .await;
    let api = cluster.api(1);
    let publish = |i: u64| {
        let api = api.clone();
        async move {
            let (status, body) = api
                .trigger(CHANNEL, "m", json!(format!("m{i}")))
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
        }
    };
    for i in 1..=3 {
        publish(i).await;
    }
    read_until(&mut lines, &mut log, "the first live messages", |v| {
        v["event"] == "m" && v["serial"] == 3
    })
    .await;
    // Its node dies; everything published now, while it reconnects, it must get by resume.
    cluster.kill_node(0).unwrap();
    for i in 4..=40 {
        publish(i).await;
    }
    let outcome = read_until(&mut lines, &mut log, "a resume outcome", |v| {
        matches!(v["type"].as_str(), Some("resume_success" | "resume_failed"))
    })
    .await;
    assert_eq!(outcome["type"], "resume_success", "{outcome}");
    for i in 41..=TOTAL {
        publish(i).await;
    }
    read_until(&mut lines, &mut log, "every message", |v| {
        v["type"] == "exit"
    })
    .await;
    let status = child.wait().await.unwrap();
    let serials: Vec<u64> = log
        .iter()
        .filter(|v| v["type"] == "event" && v["event"] == "m")
        .map(|v| v["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(
        serials,
        (1..=TOTAL).collect::<Vec<_>>(),
        "exactly the published messages, in order, none twice"
    );
    assert!(status.success(), "harness exit {status}; lines: {log:#?}");
    let replayed: u64 = outcome["recovered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["replayed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        replayed > 0,
        "the resume replayed what was missed: {outcome}"
    );
    assert!(
        !log.iter().any(|v| v["type"] == "resume_failed"),
        "no channel failed: {log:#?}"
    );
}
