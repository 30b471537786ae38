//! [`ChaosConfig`], the knobs of a chaos run, and [`ChaosScenarioBuilder`], which sets them.

use std::path::PathBuf;
use std::time::Duration;

use crate::chaos::ChaosScenario;
use crate::cluster::NodeMode;
use crate::TestkitError;

/// Environment variable that overrides the seed of every scenario built without an explicit
/// [`ChaosScenarioBuilder::seed`], so a failed CI run can be replayed without a code change.
pub const SEED_ENV: &str = "SOCKUDO_CHAOS_SEED";

/// Everything a chaos run is configured with. Build it with [`ChaosScenario::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    /// Number of nodes (default 3). At most one is down at any time.
    pub nodes: usize,
    /// How the nodes run (default [`NodeMode::Process`]: real `sockudo` binaries).
    pub mode: NodeMode,
    /// Number of V2 subscribers (default 24).
    pub subscribers: usize,
    /// Number of channels the messages are spread over (default 3).
    pub channels: usize,
    /// Channels each subscriber subscribes to (default 1): subscriber `i` takes channels
    /// `i, i+1, …` modulo [`channels`](Self::channels).
    pub channels_per_subscriber: usize,
    /// Number of V1 (protocol 7) presence members (default 6).
    pub presence_members: usize,
    /// Publishes per second, spread over the channels (default 20).
    pub publish_rate: f64,
    /// How long one message may be retried before it counts as unacknowledged (default 30 s).
    pub publish_timeout: Duration,
    /// Number of node kills (default 20).
    pub kills: usize,
    /// Time from one kill to the next (default 3 s); each kill is delayed by a further
    /// seeded jitter below 250 ms so kills do not line up with the publisher's ticks.
    pub kill_interval: Duration,
    /// Time a killed node stays down before it is started again (default 1 s).
    pub restart_delay: Duration,
    /// Restart killed nodes under a new node id instead of their old one (default off).
    pub restart_with_new_node_id: bool,
    /// Publishing before the first kill and after the last restart (default 2 s).
    pub calm: Duration,
    /// Upper bound of the wait, after publishing stopped, for every subscriber to have every
    /// acknowledged message and for presence to converge (default 30 s).
    pub settle_timeout: Duration,
    /// The seed of every random choice (which node dies, which channel a message goes to).
    pub seed: u64,
    /// Extra environment for every process node (e.g. `RUST_LOG`).
    pub node_env: Vec<(String, String)>,
    /// Where to copy each process node's log (`node-{i}.log`) and the raw records
    /// (`records.json`) when the run ends (CI artifacts).
    pub log_dir: Option<PathBuf>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            nodes: 3,
            mode: NodeMode::Process,
            subscribers: 24,
            channels: 3,
            channels_per_subscriber: 1,
            presence_members: 6,
            publish_rate: 20.0,
            publish_timeout: Duration::from_secs(30),
            kills: 20,
            kill_interval: Duration::from_secs(3),
            restart_delay: Duration::from_secs(1),
            restart_with_new_node_id: false,
            calm: Duration::from_secs(2),
            settle_timeout: Duration::from_secs(30),
            seed: default_seed(),
            node_env: Vec::new(),
            log_dir: None,
        }
    }
}

/// `$SOCKUDO_CHAOS_SEED` when it parses, else a fresh random seed.
fn default_seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

impl ChaosConfig {
    /// Why this configuration cannot run, if it cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.nodes < 2 {
            return Err("a chaos run needs at least 2 nodes (one is down at times)".into());
        }
        if self.channels == 0 || self.subscribers == 0 {
            return Err("a chaos run needs at least one channel and one subscriber".into());
        }
        if self.channels_per_subscriber == 0 || self.channels_per_subscriber > self.channels {
            return Err(format!(
                "channels_per_subscriber must be 1..={} (the number of channels)",
                self.channels
            ));
        }
        if !(self.publish_rate.is_finite() && self.publish_rate > 0.0) {
            return Err("publish_rate must be a positive number".into());
        }
        if self.restart_delay >= self.kill_interval {
            // The next kill must find every node up, so one node at most is ever down.
            return Err("restart_delay must be shorter than kill_interval".into());
        }
        Ok(())
    }

    /// The channels the messages go to.
    pub fn channel_names(&self) -> Vec<String> {
        (0..self.channels).map(|i| format!("chaos-{i}")).collect()
    }

    /// The channels subscriber `i` subscribes to.
    pub fn channels_of(&self, subscriber: usize) -> Vec<String> {
        let names = self.channel_names();
        (0..self.channels_per_subscriber)
            .map(|k| names[(subscriber + k) % names.len()].clone())
            .collect()
    }
}

/// Builds a [`ChaosScenario`]; every knob has a default (see [`ChaosConfig`]).
#[derive(Debug, Clone, Default)]
pub struct ChaosScenarioBuilder {
    config: ChaosConfig,
}

impl ChaosScenarioBuilder {
    /// Number of nodes (default 3, at least 2).
    pub fn nodes(mut self, n: usize) -> Self {
        self.config.nodes = n;
        self
    }

    /// Process nodes (default) or in-process nodes (faster, but a kill is a dropped runtime
    /// rather than a SIGKILL).
    pub fn mode(mut self, mode: NodeMode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Number of V2 subscribers (default 24).
    pub fn subscribers(mut self, n: usize) -> Self {
        self.config.subscribers = n;
        self
    }

    /// Number of channels (default 3).
    pub fn channels(mut self, n: usize) -> Self {
        self.config.channels = n;
        self
    }

    /// Channels per subscriber (default 1).
    pub fn channels_per_subscriber(mut self, n: usize) -> Self {
        self.config.channels_per_subscriber = n;
        self
    }

    /// Number of V1 presence members (default 6; 0 skips the presence check).
    pub fn presence_members(mut self, n: usize) -> Self {
        self.config.presence_members = n;
        self
    }

    /// Publishes per second (default 20).
    pub fn publish_rate(mut self, per_second: f64) -> Self {
        self.config.publish_rate = per_second;
        self
    }

    /// Retry budget of one message (default 30 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout;
        self
    }

    /// Number of kills (default 20).
    pub fn kills(mut self, n: usize) -> Self {
        self.config.kills = n;
        self
    }

    /// Time between kills (default 3 s).
    pub fn kill_interval(mut self, interval: Duration) -> Self {
        self.config.kill_interval = interval;
        self
    }

    /// Downtime of a killed node (default 1 s).
    pub fn restart_delay(mut self, delay: Duration) -> Self {
        self.config.restart_delay = delay;
        self
    }

    /// Restart killed nodes under a new node id (default off: the same id).
    pub fn restart_with_new_node_id(mut self, on: bool) -> Self {
        self.config.restart_with_new_node_id = on;
        self
    }

    /// Publishing without kills before the first and after the last (default 2 s).
    pub fn calm(mut self, calm: Duration) -> Self {
        self.config.calm = calm;
        self
    }

    /// Bound of the final settling wait (default 30 s).
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.config.settle_timeout = timeout;
        self
    }

    /// The seed (default: `$SOCKUDO_CHAOS_SEED`, else random). The run prints it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// One more environment variable for every process node.
    pub fn node_env(mut self, name: &str, value: &str) -> Self {
        self.config.node_env.push((name.into(), value.into()));
        self
    }

    /// Copy each process node's log to `dir/node-{i}.log` and write the raw records to
    /// `dir/records.json` when the run ends.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.log_dir = Some(dir.into());
        self
    }

    /// The scenario, or [`TestkitError::Usage`] when the knobs cannot work together.
    pub fn build(self) -> Result<ChaosScenario, TestkitError> {
        ChaosScenario::new(self.config)
    }
}
