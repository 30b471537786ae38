//! The chaos scenario (`sockudo_testkit::chaos`) against real `sockudo` processes: nodes
//! SIGKILLed and restarted under load while V2 subscribers resume and V1 presence members
//! re-join; nothing acknowledged may be lost, duplicated or reordered, and presence must
//! converge. The CI run is small (≈ 2 minutes); `chaos_long` is the soak:
//!
//! ```text
//! cargo test -p sockudo-testkit --test chaos -- --nocapture
//! cargo test -p sockudo-testkit --test chaos -- --ignored --nocapture
//! SOCKUDO_CHAOS_SEED=<seed> SOCKUDO_CHAOS_LOG_DIR=/tmp/chaos cargo test -p sockudo-testkit --test chaos
//! ```
//!
//! `SOCKUDO_CHAOS_LOG_DIR` keeps every node's log (`<dir>/<test>/node-{i}.log`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use sockudo_testkit::chaos::{ChaosScenario, ChaosScenarioBuilder};

/// Where to keep the node logs of test `name`, when asked to.
fn with_logs(builder: ChaosScenarioBuilder, name: &str) -> ChaosScenarioBuilder {
    match std::env::var_os("SOCKUDO_CHAOS_LOG_DIR") {
        Some(dir) => builder.log_dir(PathBuf::from(dir).join(name)),
        None => builder,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_twenty_kills_lose_nothing() {
    let builder = ChaosScenario::builder()
        .nodes(3)
        .subscribers(24)
        .channels(3)
        .presence_members(6)
        .publish_rate(20.0)
        .kills(20)
        .kill_interval(Duration::from_secs(3))
        .restart_delay(Duration::from_secs(1));
    let report = with_logs(builder, "ci")
        .build()
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(report.kills, 20);
    report.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: ≥ 100 kills, about 6 minutes"]
async fn chaos_long() {
    let builder = ChaosScenario::builder()
        .nodes(3)
        .subscribers(60)
        .channels(6)
        .channels_per_subscriber(2)
        .presence_members(15)
        .publish_rate(40.0)
        .kills(100)
        .kill_interval(Duration::from_secs(3))
        .restart_delay(Duration::from_secs(1));
    let report = with_logs(builder, "long")
        .build()
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(report.kills, 100);
    report.assert_clean();
}
