//! A reusable chaos scenario: "continuity you can prove".
//!
//! [`ChaosScenario`] starts a cluster of real `sockudo` processes sharing one Redis (adapter,
//! cache, V2 history and queue), V2 subscribers (`sockudo-client`, through the cluster's
//! round-robin balancer, `?protocol=2`) and V1 presence members (protocol 7), publishes unique
//! messages over the signed HTTP API (each with a `message_id` and an `idempotency_key`,
//! retried with the same body on another node until a 2xx), SIGKILLs a random node every
//! interval and restarts it after a delay, lets everything settle, and returns a
//! [`ChaosReport`]: kills, acknowledged and unacknowledged publishes, deliveries, lost,
//! duplicated and out-of-order messages, resume verdicts by code, and whether every node's
//! presence list converged on the members actually connected.
//!
//! The run prints its seed; `SOCKUDO_CHAOS_SEED=<seed>` replays the same choices (which node
//! dies when, which channel each message goes to); timing still varies.
//!
//! ```no_run
//! use std::time::Duration;
//! use sockudo_testkit::chaos::ChaosScenario;
//!
//! # async fn example() -> Result<(), sockudo_testkit::TestkitError> {
//! let report = ChaosScenario::builder()
//!     .nodes(3)
//!     .subscribers(24)
//!     .channels(3)
//!     .presence_members(6)
//!     .kills(20)
//!     .kill_interval(Duration::from_secs(3))
//!     .restart_delay(Duration::from_secs(1))
//!     .build()?
//!     .run()
//!     .await?;
//! println!("{report}");
//! report.assert_clean();
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`config`]: [`ChaosConfig`] and [`ChaosScenarioBuilder`].
//! - `publisher`, `subscribers`, `presence`, `killer`: the actors of a run (private).
//! - [`records`]: [`ChaosRecords`], the raw observations.
//! - [`report`]: [`ChaosReport`] (computed by `accounting` from the records).

#![warn(missing_docs)]

mod accounting;
pub mod config;
pub mod killer;
mod presence;
mod publisher;
pub mod records;
mod records_json;
pub mod report;
mod subscribers;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cluster::{Cluster, NodeMode};
use crate::process::ensure_sockudo_binary;
use crate::TestkitError;

pub use config::{ChaosConfig, ChaosScenarioBuilder, SEED_ENV};
pub use presence::PRESENCE_CHANNEL;
pub use publisher::EVENT;
pub use records::{
    ChaosRecords, Delivery, KillRecord, PresenceCheck, PresenceMemberRecord, PublishRecord,
    ResumeOutcome, ResumeRecord, SubscriberRecord, SubscriberStats,
};
pub use report::{ChaosReport, PresenceDivergence};

use killer::{Killer, NodeLiveness};
use presence::{MemberSetup, PresenceMembers};
use publisher::Publisher;
use subscribers::Subscribers;

/// How long the cluster gets to form (every node sees every presence member) before the run.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest presence settling: two node timeouts of the testkit's cluster settings.
const MIN_PRESENCE_SETTLE: Duration = Duration::from_secs(5);
/// How often settling checks the subscribers.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// A configured chaos run; [`run`](Self::run) it as often as needed.
#[derive(Debug, Clone)]
pub struct ChaosScenario {
    config: ChaosConfig,
}

impl ChaosScenario {
    /// A builder with the defaults of [`ChaosConfig`].
    pub fn builder() -> ChaosScenarioBuilder {
        ChaosScenarioBuilder::default()
    }

    /// A scenario for `config`, if it can run.
    pub fn new(config: ChaosConfig) -> Result<ChaosScenario, TestkitError> {
        config.check().map_err(TestkitError::Usage)?;
        Ok(ChaosScenario { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ChaosConfig {
        &self.config
    }

    /// Run the scenario, print the report and return it. An `Err` is a harness failure
    /// (the cluster or a client could not start); server misbehaviour is in the report.
    pub async fn run(&self) -> Result<ChaosReport, TestkitError> {
        let report = ChaosReport::from_records(&self.run_records().await?);
        println!("{report}");
        Ok(report)
    }

    /// Run the scenario and return the raw observations.
    pub async fn run_records(&self) -> Result<ChaosRecords, TestkitError> {
        let config = &self.config;
        eprintln!(
            "chaos: seed {} (replay with {SEED_ENV}={})",
            config.seed, config.seed
        );
        if config.mode == NodeMode::Process {
            tokio::task::spawn_blocking(ensure_sockudo_binary)
                .await
                .map_err(|e| TestkitError::Node(format!("building sockudo panicked: {e}")))??;
        }
        let start = Instant::now();
        let mut cluster = build_cluster(config).await?;
        let actors = Actors::start(&cluster, config, start).await?;
        let outcome = self.drive(&mut cluster, &actors, start).await;
        let (presence_checks, publishes, kills) = outcome;
        let presence_members = actors.members.finish().await;
        let subscribers = actors.subscribers.finish().await;
        let records = ChaosRecords {
            seed: config.seed,
            nodes: config.nodes,
            duration: start.elapsed(),
            publishes,
            subscribers,
            kills,
            presence_members,
            presence_checks,
        };
        if let Some(dir) = &config.log_dir {
            keep_artifacts(&cluster, &records, dir)?;
        }
        Ok(records)
    }

    /// Publish, kill, stop publishing, settle. Returns the presence checks, the publishes
    /// and the kills.
    async fn drive(
        &self,
        cluster: &mut Cluster,
        actors: &Actors,
        start: Instant,
    ) -> (Vec<PresenceCheck>, Vec<PublishRecord>, Vec<KillRecord>) {
        let config = &self.config;
        let liveness = Arc::new(NodeLiveness::new(config.nodes));
        let (stop, stopped) = watch::channel(false);
        let publisher = Publisher {
            apis: (0..config.nodes).map(|i| cluster.api(i)).collect(),
            liveness: Arc::clone(&liveness),
            channels: config.channel_names(),
            rate: config.publish_rate,
            budget: config.publish_timeout,
            seed: config.seed,
            start,
        }
        .spawn(stopped);
        tokio::time::sleep(config.calm).await;
        let killer = Killer {
            kills: config.kills,
            interval: config.kill_interval,
            restart_delay: config.restart_delay,
            new_node_ids: config.restart_with_new_node_id,
            seed: config.seed,
            start,
        };
        let kills = killer.run(cluster, &liveness).await;
        tokio::time::sleep(config.calm).await;
        stop.send_replace(true);
        let publishes = publisher.await.unwrap_or_default();
        let deadline = Instant::now() + config.settle_timeout;
        let expected = acknowledged_ids(&publishes);
        while !actors.subscribers.have_all(&expected) && Instant::now() < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
        }
        let apis: Vec<_> = (0..config.nodes).map(|i| cluster.api(i)).collect();
        let presence_deadline = deadline.max(Instant::now() + MIN_PRESENCE_SETTLE);
        let checks = if config.presence_members > 0 {
            presence::settle(&apis, &actors.members, presence_deadline).await
        } else {
            Vec::new()
        };
        (checks, publishes, kills)
    }
}

/// The clients of a run.
#[derive(Debug)]
struct Actors {
    members: PresenceMembers,
    subscribers: Subscribers,
}

impl Actors {
    /// Start the presence members and the subscribers, and wait until the cluster has
    /// formed: every node lists every member.
    async fn start(
        cluster: &Cluster,
        config: &ChaosConfig,
        start: Instant,
    ) -> Result<Actors, TestkitError> {
        let app = cluster.app();
        let setup = MemberSetup {
            ws_url: cluster.balancer_ws_url(),
            key: app.key.clone(),
            secret: app.secret.clone(),
        };
        let members = PresenceMembers::start(&setup, config.presence_members);
        let channels = (0..config.subscribers)
            .map(|i| config.channels_of(i))
            .collect();
        let subscribers =
            Subscribers::start(&cluster.balancer_url(), &app.key, channels, start).await?;
        if config.presence_members > 0 {
            let apis: Vec<_> = (0..config.nodes).map(|i| cluster.api(i)).collect();
            let checks =
                presence::settle(&apis, &members, Instant::now() + FORMATION_TIMEOUT).await;
            if !members.all_joined() || !checks.iter().all(PresenceCheck::converged) {
                return Err(TestkitError::timeout(
                    format!("the cluster to form (presence lists: {checks:?})"),
                    FORMATION_TIMEOUT,
                ));
            }
        }
        Ok(Actors {
            members,
            subscribers,
        })
    }
}

/// `config.nodes` nodes sharing one Redis for adapter, cache, history and queue.
async fn build_cluster(config: &ChaosConfig) -> Result<Cluster, TestkitError> {
    let node_env = config.node_env.clone();
    Cluster::builder()
        .nodes(config.nodes)
        .redis(true)
        .mode(config.mode)
        .settings(|_, settings| settings.queue.driver = "redis".into())
        .env(move |_, env| env.extend(node_env.iter().cloned()))
        .build()
        .await
}

/// The acknowledged message ids of each channel.
fn acknowledged_ids(publishes: &[PublishRecord]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in publishes.iter().filter(|p| p.acknowledged()) {
        out.entry(p.channel.clone())
            .or_default()
            .push(p.message_id.clone());
    }
    out
}

/// Copy each process node's log to `dir/node-{i}.log` and write `dir/records.json`.
fn keep_artifacts(
    cluster: &Cluster,
    records: &ChaosRecords,
    dir: &Path,
) -> Result<(), TestkitError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TestkitError::io(format!("create {}", dir.display()), e))?;
    let json = dir.join("records.json");
    std::fs::write(&json, records.to_json().to_string())
        .map_err(|e| TestkitError::io(format!("write {}", json.display()), e))?;
    for (i, node) in cluster.nodes().iter().enumerate() {
        if let Some(process) = node.as_process() {
            let to = dir.join(format!("node-{i}.log"));
            std::fs::copy(process.log_path(), &to)
                .map_err(|e| TestkitError::io(format!("copy the log to {}", to.display()), e))?;
        }
    }
    Ok(())
}
