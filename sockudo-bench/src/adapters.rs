//! The adapter of the nodes `--mode cluster-fanout` starts: the broker it needs, and the node
//! settings (docs/configuration.md names) that point the nodes at it.
//!
//! A single Redis always runs next to it: cache and history stay there for every adapter, and
//! presence too for every adapter but `redis-cluster` (which moves everything onto the
//! cluster), so the adapters differ only in the transport. RabbitMQ, Kafka (Tansu), the Pub/Sub
//! emulator and Pulsar (pulsar-lite) are started by the testkit's own launchers (cargo feature
//! `brokers`), exactly as the cluster tests start them.

use std::any::Any;
use std::path::Path;

use crate::procs::{self, Proc};

/// Every value `--adapter` takes.
pub const ADAPTERS: &str = "redis, redis-cluster, nats, rabbitmq, kafka, google-pubsub, pulsar";

/// The running broker of an adapter and the node settings that use it.
pub struct AdapterBroker {
    /// Node settings on top of [`procs::cluster_env`], replacing what they name.
    pub env: Vec<(&'static str, String)>,
    /// Roots of the broker's process trees (empty when the adapter uses the shared Redis).
    pub pids: Vec<u32>,
    /// What runs, for the progress line.
    pub what: String,
    /// The broker processes: killed when this value is dropped.
    _held: Vec<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for AdapterBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterBroker")
            .field("what", &self.what)
            .field("pids", &self.pids)
            .finish_non_exhaustive()
    }
}

impl AdapterBroker {
    fn new(
        what: impl Into<String>,
        env: Vec<(&'static str, String)>,
        pids: Vec<u32>,
        held: Vec<Box<dyn Any + Send>>,
    ) -> AdapterBroker {
        AdapterBroker {
            env,
            pids,
            what: what.into(),
            _held: held,
        }
    }

    /// `env` applied over `base` (a name set here replaces the base's value).
    pub fn apply(&self, base: &mut Vec<(String, String)>) {
        for (k, v) in &self.env {
            base.retain(|(name, _)| name != k);
            base.push(((*k).to_owned(), v.clone()));
        }
    }
}

/// Start what `adapter` needs (logs in `dir`). Unknown names, and the broker adapters in a
/// build without the `brokers` feature, are refused with a message saying why.
pub async fn start(adapter: &str, dir: &Path) -> Result<AdapterBroker, String> {
    match adapter {
        "redis" => Ok(AdapterBroker::new(
            "the shared redis-server",
            Vec::new(),
            Vec::new(),
            Vec::new(),
        )),
        "nats" => {
            let nats = procs::start_nats(dir).await?;
            let env = vec![
                ("ADAPTER_DRIVER", "nats".to_owned()),
                ("PRESENCE_DRIVER", "redis".to_owned()),
                ("NATS_URL", format!("nats://127.0.0.1:{}", nats.port)),
            ];
            let what = format!("nats-server on {}", nats.port);
            let pids = nats.pid().into_iter().collect();
            Ok(AdapterBroker::new(what, env, pids, vec![Box::new(nats)]))
        }
        "redis-cluster" => {
            // Everything on the Redis Cluster; the single Redis stays idle.
            let (servers, seeds) = procs::start_redis_cluster(dir).await?;
            let env = vec![
                ("ADAPTER_DRIVER", "redis-cluster".to_owned()),
                ("CACHE_DRIVER", "redis-cluster".to_owned()),
                ("HISTORY_DRIVER", "redis-cluster".to_owned()),
                ("REDIS_CLUSTER_NODES", seeds.join(",")),
            ];
            let pids = servers.iter().filter_map(Proc::pid).collect();
            let held: Vec<Box<dyn Any + Send>> = vec![Box::new(servers)];
            Ok(AdapterBroker::new(
                "a 3-primary Redis Cluster",
                env,
                pids,
                held,
            ))
        }
        "rabbitmq" | "kafka" | "google-pubsub" | "pulsar" => brokers::start(adapter).await,
        other => Err(format!("--adapter {other:?}: expected one of {ADAPTERS}")),
    }
}

#[cfg(feature = "brokers")]
mod brokers {
    use super::AdapterBroker;
    use sockudo_testkit::{KafkaBroker, PubSubEmulator, PulsarBroker, RabbitMq, TestkitError};

    /// Start the broker of a broker adapter with the testkit's launcher.
    pub(super) async fn start(adapter: &str) -> Result<AdapterBroker, String> {
        let failed = |e: TestkitError| format!("start the {adapter} broker: {e}");
        let (env, pid, what, held): (_, _, String, Box<dyn std::any::Any + Send>) = match adapter {
            "rabbitmq" => {
                let mq = RabbitMq::start().await.map_err(failed)?;
                let env = vec![("RABBITMQ_URL", mq.url())];
                let what = format!("a private RabbitMQ node on {}", mq.addr());
                (env, mq.pid(), what, Box::new(mq))
            }
            "kafka" => {
                let kafka = KafkaBroker::start().await.map_err(failed)?;
                let env = vec![("KAFKA_BROKERS", kafka.brokers())];
                let what = format!("Tansu (Kafka API, memory storage) on {}", kafka.addr());
                (env, kafka.pid(), what, Box::new(kafka))
            }
            "google-pubsub" => {
                let emulator = PubSubEmulator::start().await.map_err(failed)?;
                let env = vec![
                    ("GOOGLE_PUBSUB_PROJECT_ID", "sockudo-bench".to_owned()),
                    ("PUBSUB_EMULATOR_HOST", emulator.host()),
                ];
                let what = format!("the Pub/Sub emulator on {}", emulator.addr());
                (env, emulator.pid(), what, Box::new(emulator))
            }
            "pulsar" => {
                let pulsar = PulsarBroker::start().await.map_err(failed)?;
                let env = vec![("PULSAR_URL", pulsar.url())];
                let what = format!("pulsar-lite on {}", pulsar.addr());
                (env, pulsar.pid(), what, Box::new(pulsar))
            }
            other => return Err(format!("{other:?} is not a broker adapter")),
        };
        let mut all = vec![
            ("ADAPTER_DRIVER", adapter.to_owned()),
            ("PRESENCE_DRIVER", "redis".to_owned()),
        ];
        all.extend(env);
        Ok(AdapterBroker::new(
            what,
            all,
            pid.into_iter().collect(),
            vec![held],
        ))
    }
}

#[cfg(not(feature = "brokers"))]
mod brokers {
    use super::AdapterBroker;

    /// Refuse: this build has no broker launchers.
    pub(super) async fn start(adapter: &str) -> Result<AdapterBroker, String> {
        Err(format!(
            "--adapter {adapter} starts its broker with the testkit's launchers: build \
             sockudo-bench with `--features brokers` (and the sockudo binary with the \
             `{adapter}` feature)"
        ))
    }
}
