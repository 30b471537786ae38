//! The operator kit in deploy/ against the real things: the Prometheus rules through
//! `promtool` (syntax and a unit test per alert), the alerts on a real Prometheus scraping a
//! 3-node cluster whose Redis is killed and restarted, every metric name of the rules and the
//! dashboard on the running nodes' /metrics, and the Kubernetes manifests rendered offline and
//! checked. Needs Debian's `prometheus` package (`prometheus`, `promtool`): missing is a
//! failure, not a skip.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "operator_kit/kit.rs"]
mod kit;
#[path = "operator_kit/kustomize.rs"]
mod kustomize;
#[path = "operator_kit/manifests.rs"]
mod manifests;
#[path = "operator_kit/prometheus.rs"]
mod prometheus;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use serde_yaml::Value;
use sockudo_testkit::{ensure_sockudo_binary, Cluster, NodeMode, TestClient};
use tokio::time::Instant;

use kit::{deploy, field, rules, rules_path, rules_with, run, tool, TempDir};
use prometheus::Prometheus;

/// `promtool test rules` on the shipped unit tests, against `rules` (YAML text).
fn promtool_test(rules: &str) -> (bool, String) {
    let dir = TempDir::new("promtool");
    std::fs::write(dir.path().join("sockudo-rules.yml"), rules).unwrap();
    let tests = dir.path().join("sockudo-rules.test.yml");
    std::fs::copy(deploy("prometheus/sockudo-rules.test.yml"), &tests).unwrap();
    run(Command::new(tool("promtool", "SOCKUDO_PROMTOOL"))
        .arg("test")
        .arg("rules")
        .arg(&tests))
}

/// The shipped rules without annotations: promtool compares the annotations of expected
/// alerts too, and these are prose rendered from values (their runbook links are checked by
/// `every_alert_has_for_severity_and_runbook`).
fn rules_without_annotations() -> String {
    rules_with(|r| {
        r.remove("annotations");
    })
}

fn alert_names() -> Vec<String> {
    rules()
        .iter()
        .filter_map(|r| field(r, "alert").map(str::to_owned))
        .collect()
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = run(Command::new(tool("promtool", "SOCKUDO_PROMTOOL"))
        .arg("check")
        .arg("rules")
        .arg(rules_path()));
    assert!(ok, "promtool check rules:\n{out}");

    let (ok, out) = promtool_test(&rules_without_annotations());
    assert!(ok, "promtool test rules:\n{out}");

    // The unit tests can fail, for every alert, both ways: with every alert silenced each
    // one's firing case fails; with every alert firing always each one's quiet case fails.
    for (mutation, expr) in [
        ("never fires", "vector(0) > 1"),
        ("always fires", "vector(1)"),
    ] {
        let mutated = rules_with(|r| {
            r.remove("annotations");
            if r.contains_key("alert") {
                r.insert("expr".into(), expr.into());
            }
        });
        let (ok, out) = promtool_test(&mutated);
        assert!(!ok, "rules that {mutation} pass the unit tests:\n{out}");
        for alert in alert_names() {
            assert!(
                out.contains(&format!("alertname: {alert},")),
                "no unit test of {alert} fails when it {mutation}:\n{out}"
            );
        }
    }
}

#[test]
fn every_alert_has_for_severity_and_runbook() {
    let anchors = kit::doc_anchors();
    let alerts: Vec<_> = rules()
        .into_iter()
        .filter(|r| r.contains_key("alert"))
        .collect();
    assert!(alerts.len() >= 15, "{} alerts", alerts.len());
    for r in &alerts {
        let name = field(r, "alert").unwrap();
        assert!(field(r, "for").is_some(), "{name} has no `for:`");
        let labels = r.get("labels").unwrap_or(&Value::Null);
        let severity = labels["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let ann = r.get("annotations").unwrap_or(&Value::Null);
        let runbook = ann["runbook_url"].as_str().unwrap_or_default();
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not in docs/operations.md"));
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}: the runbook anchor is the alert name"
        );
        assert!(
            anchors.contains(anchor),
            "{name}: docs/operations.md has no heading #{anchor}"
        );
        assert!(
            !ann["summary"].is_null() && !ann["description"].is_null(),
            "{name}"
        );
    }
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    let redis_secret = [("REDIS_URL", "redis://:pw@redis:6379")];
    let base = manifests::rendered("base");
    manifests::check("base", &base, &[]);
    assert!(
        !manifests::config_env(&base).contains_key("ADAPTER_DRIVER"),
        "the base names no adapter: the examples do"
    );
    for (example, driver, secret) in [
        ("examples/redis", "redis", redis_secret.to_vec()),
        (
            "examples/nats",
            "nats",
            vec![
                ("NATS_USERNAME", "sockudo"),
                ("NATS_PASSWORD", "pw"),
                ("REDIS_URL", "redis://:pw@redis:6379"),
            ],
        ),
    ] {
        let resources = manifests::rendered(example);
        manifests::check(example, &resources, &secret);
        assert_eq!(manifests::config_env(&resources)["ADAPTER_DRIVER"], driver);
    }
    assert!(
        manifests::rendered("examples/nats")
            .iter()
            .any(|r| r["kind"] == "ServiceMonitor"),
        "the optional ServiceMonitor renders"
    );
}

/// Scrape and rule evaluation intervals of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
const EVAL: Duration = Duration::from_secs(1);
/// The `for:` every alert gets in the end-to-end test. The shipped `for:` (1–2 minutes for
/// the alerts under test) would make the test wait that long; the test rule file is the
/// shipped one with only `for:` rewritten (see `rules_with`), so the expressions, labels and
/// annotations tested are the shipped ones.
const FOR_IN_TEST: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node ids of the firing alerts named `alert`.
async fn firing(prom: &Prometheus, alert: &str) -> BTreeSet<String> {
    prom.alerts()
        .await
        .iter()
        .filter(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
        .filter_map(|a| a["labels"]["node_id"].as_str().map(str::to_owned))
        .collect()
}

/// Whether `alert` is active (pending or firing) for any node.
async fn active(prom: &Prometheus, alert: &str) -> bool {
    prom.alerts()
        .await
        .iter()
        .any(|a| a["labels"]["alertname"] == alert)
}

async fn poll_until<F, Fut>(what: &str, deadline: Duration, prom: &Prometheus, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(
            Instant::now() < end,
            "{what}: not within {deadline:?}; alerts: {:#?}\nprometheus log:\n{}",
            prom.alerts().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every metric family named on the nodes' /metrics.
async fn exposed(metrics: &[SocketAddr]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for addr in metrics {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        names.extend(kit::exposed_names(&text));
    }
    names
}

/// A 3-node cluster of `sockudo` processes on a private Redis, with /metrics on `metrics`.
async fn start_cluster(metrics: &[SocketAddr]) -> Cluster {
    tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));
    let ports: Vec<u16> = metrics.iter().map(SocketAddr::port).collect();
    Cluster::builder()
        .nodes(metrics.len())
        .redis(true)
        .mode(NodeMode::Process)
        .settings(move |i, s| s.metrics_port = ports[i])
        .build()
        .await
        .unwrap()
}

/// Use the features whose series appear on first use: connections, subscriptions, publishes
/// and the fanout, a closed connection, a refused handshake.
async fn exercise(cluster: &Cluster) {
    let mut client = cluster.client(0).await.unwrap();
    client.subscribe("ops").await.unwrap();
    let (status, body) = cluster
        .api(1)
        .trigger("ops", "e", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    client
        .recv_event("e", Duration::from_secs(5))
        .await
        .unwrap();
    client.close().await.unwrap();
    let unknown_app = sockudo_testkit::ws_url(cluster.node(0).addr(), "no-such-key");
    assert!(
        TestClient::connect(&unknown_app).await.is_err(),
        "an unknown app key is refused (4001)"
    );
}

/// Every metric the rules and the dashboard read is on the nodes' /metrics, and every
/// dashboard query is valid PromQL for `prom`.
async fn check_names_and_queries(prom: &Prometheus, metrics: &[SocketAddr]) {
    let exposed = exposed(metrics).await;
    let mut used = BTreeSet::new();
    for r in rules() {
        used.extend(kit::metric_names(field(&r, "expr").unwrap()));
    }
    let dashboard = kit::dashboard_exprs();
    for e in &dashboard {
        used.extend(kit::metric_names(e));
    }
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}\nexported: {exposed:?}"
    );
    for e in dashboard.iter().filter(|e| !e.starts_with("label_values(")) {
        let q = e
            .replace("$node_id", ".*")
            .replace("$app_id", ".*")
            .replace("$__rate_interval", "1m");
        let answer = prom.query(&q).await;
        assert_eq!(answer["status"], "success", "{q}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_against_a_real_cluster() {
    let metrics: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut cluster = start_cluster(&metrics).await;
    let node_ids: BTreeSet<String> = (0..3).map(|i| format!("node-{i}")).collect();
    exercise(&cluster).await;

    let for_in_test = format!("{}s", FOR_IN_TEST.as_secs());
    let test_rules = rules_with(|r| {
        if r.contains_key("for") {
            r.insert("for".into(), for_in_test.as_str().into());
        }
    });
    let prom = Prometheus::start(&metrics, &test_rules, SCRAPE, EVAL).await;
    let (p, ids) = (&prom, &node_ids);
    poll_until(
        "every node scraped",
        Duration::from_secs(30),
        p,
        || async move {
            p.query(r#"count(up{job="sockudo"} == 1)"#).await["data"]["result"][0]["value"][1]
                == "3"
        },
    )
    .await;
    assert!(
        !active(&prom, "SockudoAdapterDown").await,
        "quiet while Redis is up"
    );

    cluster.stop_redis().unwrap();
    // Down from here: the nodes see it at once (the connections break), the sampler sets the
    // gauges within SAMPLE_INTERVAL, then Prometheus needs `for:` plus two scrapes and an
    // evaluation. 5 s more for a loaded 2-core machine; a deadline, not a timing assertion.
    let deadline = FOR_IN_TEST
        + 2 * SCRAPE
        + EVAL
        + sockudo_server::metrics::SAMPLE_INTERVAL
        + Duration::from_secs(5);
    for alert in ["SockudoAdapterDown", "SockudoNodeNotReady"] {
        poll_until(
            &format!("{alert} firing on every node"),
            deadline,
            p,
            || async move { firing(p, alert).await == *ids },
        )
        .await;
    }
    // A publish now fails (and `sockudo_publishes_failed_total` appears).
    let (status, body) = cluster.api(2).trigger("ops", "e", json!({})).await.unwrap();
    assert_eq!(
        status, 503,
        "publishes fail while the adapter is down: {body}"
    );
    check_names_and_queries(&prom, &metrics).await;

    cluster.start_redis().await.unwrap();
    poll_until(
        "the alerts resolved after Redis came back",
        Duration::from_secs(60),
        p,
        || async move {
            !active(p, "SockudoAdapterDown").await && !active(p, "SockudoNodeNotReady").await
        },
    )
    .await;
}
