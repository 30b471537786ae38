//! Command-line options.

use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connect + subscribe, then publish over HTTP and measure deliveries and latency.
    Publish,
    /// Only connect + subscribe: setup rate and idle RSS per connection.
    ConnectOnly,
    /// Start 3 (`--nodes`) sockudo processes + redis-server (or attach with `--node-urls`),
    /// subscribers spread over the nodes, publishes round-robin at rising `--rates`.
    ClusterFanout,
    /// 2+ nodes + Redis: V2 clients on node A, SIGKILL A, publish more, everyone resumes on
    /// node B; time to resume, loss and duplicates by serial; Redis history append rate.
    ResumeStorm,
    /// One node with QUEUE_DRIVER=redis and a webhook target served by this tool:
    /// end-to-end webhook events/s, and retries under a failing target.
    Webhooks,
    /// Push notifications over Redis against a local fake FCM: burst admission
    /// (publishes/s accepted, latency) and dispatch (notifications/s), on `--push-nodes`.
    Push,
    /// 3 in-process cluster adapters over a real Redis, NATS and Redis Cluster, each "subscribed" to
    /// its own disjoint channels: bytes the broker delivers to the nodes per publish, with
    /// interest routing and with broadcast-to-all.
    InterestBytes,
    /// One node; `--connections` sockets each subscribe `--channels` distinct channels
    /// (protocol per `--protocol`), then leave: the node's RSS before, during, after.
    ChannelFlood,
    /// Serve the baseline (see `bare.rs`): a bare Tokio broadcast loop speaking just enough
    /// protocol 7 for `--mode publish`, on `--bare-ws` and `--bare-http`, until killed.
    BareServer,
}

/// Load tool for a Sockudo (Pusher protocol 7) node.
#[derive(Debug, Clone, Parser)]
#[command(name = "sockudo-bench", version, about)]
pub struct Args {
    /// WebSocket base URL; clients connect to `{url}/app/{key}?protocol=7&client=bench&version=1.0`.
    #[arg(long, default_value = "ws://127.0.0.1:6001")]
    pub url: String,

    /// HTTP API base URL; publishes go to `POST {http}/apps/{app_id}/events`.
    #[arg(long, default_value = "http://127.0.0.1:6001")]
    pub http: String,

    /// App id (path of the HTTP API).
    #[arg(long, default_value = "app-id")]
    pub app_id: String,

    /// Protocol of the subscribers: 7 (Pusher) or 2 (Sockudo V2: broadcasts carry
    /// `message_id`, `serial` and `stream_id`, and pass through the node's live sequence).
    #[arg(long, default_value_t = 7)]
    pub protocol: u8,

    /// App key (WebSocket path and `auth_key`).
    #[arg(long, default_value = "app-key")]
    pub key: String,

    /// App secret (signs the HTTP API requests).
    #[arg(long, default_value = "app-secret")]
    pub secret: String,

    /// channel-flood: the retentions (hot ring, history, dedup) of the node, in seconds, so
    /// that reclamation shows within the run.
    #[arg(long, default_value_t = 5)]
    pub flood_retention_secs: u64,

    /// Number of WebSocket subscribers.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,

    /// Public channel name (with `--channels K > 1`: `{channel}-0` … `{channel}-{K-1}`).
    #[arg(long, default_value = "bench")]
    pub channel: String,

    /// Spread subscribers round-robin over this many channels; publishes round-robin too.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,

    /// Handshakes (TCP + upgrade + subscribe) in flight at once.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,

    /// Give up on one connection's handshake + subscribe after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub handshake_timeout: f64,

    /// Publishes per second through the HTTP API (all publishers together).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Concurrent HTTP publish tasks (each waits for its response before the next request).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,

    /// Size of the event `data` string in bytes (minimum ~50, the timestamp header).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,

    /// Measured window in seconds (after warmup).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of publishing before the measured window starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// After publishing stops, wait at most this many seconds for in-flight deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,

    /// Seconds to stay idle after everyone subscribed before sampling the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,

    /// Server process id: sample its VmRSS before connecting and once all are connected and idle
    /// (start the server fresh: memory kept from an earlier run hides the per-connection cost).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Publish)]
    pub mode: Mode,

    /// bare-server: WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:6301")]
    pub bare_ws: std::net::SocketAddr,

    /// bare-server: HTTP (publish) listen address.
    #[arg(long, default_value = "127.0.0.1:6302")]
    pub bare_http: std::net::SocketAddr,

    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Multi-process modes: the `sockudo` binary to start (default
    /// `$CARGO_TARGET_DIR/release/sockudo`, then `target/release/sockudo`).
    #[arg(long, env = "SOCKUDO_BIN")]
    pub sockudo_bin: Option<String>,

    /// cluster-fanout / resume-storm: number of sockudo nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,

    /// cluster-fanout: the adapter the started nodes use: `redis`, `redis-cluster` (a
    /// 3-primary Redis Cluster is started; adapter, presence, cache and history on it), or a
    /// broker started next to the shared Redis (presence, cache and history stay on Redis):
    /// `nats` (nats-server), `rabbitmq` (a private RabbitMQ node), `kafka` (Tansu),
    /// `google-pubsub` (the Pub/Sub emulator) or `pulsar` (pulsar-lite). The last four are
    /// started by the testkit's launchers: build this tool with `--features brokers`. The
    /// sockudo binary must be built with the adapter's feature.
    #[arg(long, default_value = "redis")]
    pub adapter: String,

    /// cluster-fanout: attach to running nodes (`http://host:port`, comma separated) instead
    /// of starting Redis and nodes.
    #[arg(long, value_delimiter = ',')]
    pub node_urls: Vec<String>,

    /// cluster-fanout: publish rates to step through, comma separated.
    #[arg(long, default_value = "10,20,50,100,200,400")]
    pub rates: String,

    /// cluster-fanout: seconds of publishing per rate step.
    #[arg(long, default_value_t = 4.0)]
    pub step_secs: f64,

    /// cluster-fanout: a step whose p99 latency exceeds this (ms) is the knee.
    #[arg(long, default_value_t = 1000.0)]
    pub knee_p99_ms: f64,

    /// resume-storm: channels the clients are spread over (client i on channel i % C).
    #[arg(long, default_value_t = 4)]
    pub storm_channels: usize,

    /// resume-storm: steady publishes per second (through node B) before, during and after.
    #[arg(long, default_value_t = 20.0)]
    pub storm_rate: f64,

    /// resume-storm: extra messages published while the clients are disconnected.
    #[arg(long, default_value_t = 200)]
    pub storm_messages: u64,

    /// resume-storm: seconds of each direct `RedisHistoryStore::append` loop (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    pub history_secs: f64,

    /// webhooks: client events per second in the healthy phase (all clients together).
    #[arg(long, default_value_t = 500.0)]
    pub webhook_rate: f64,

    /// webhooks: seconds of the healthy phase.
    #[arg(long, default_value_t = 4.0)]
    pub webhook_secs: f64,

    /// webhooks: clients sending client events (one private channel each).
    #[arg(long, default_value_t = 20)]
    pub webhook_clients: usize,

    /// webhooks: in the second phase the receiver answers 503 to this many POSTs first.
    #[arg(long, default_value_t = 10)]
    pub webhook_fail_first: u64,

    /// webhooks: in the third phase the receiver answers 503 for this many seconds.
    #[arg(long, default_value_t = 8.0)]
    pub webhook_outage_secs: f64,

    /// push: nodes sharing Redis (1 or more).
    #[arg(long, default_value_t = 1)]
    pub push_nodes: usize,

    /// push: registered devices (all subscribed to one channel: the dispatch campaign).
    #[arg(long, default_value_t = 10_000)]
    pub push_devices: usize,

    /// push: publishes of the admission burst (scheduled an hour ahead: admission only).
    #[arg(long, default_value_t = 5_000)]
    pub push_publishes: usize,

    /// push: requests in flight during registration and the admission burst.
    #[arg(long, default_value_t = 32)]
    pub push_concurrency: usize,
}

impl Args {
    /// Check option combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.channels == 0 {
            return Err("--channels must be at least 1".into());
        }
        if !matches!(self.protocol, 2 | 7) {
            return Err("--protocol must be 7 or 2".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if self.mode == Mode::Publish {
            if !(self.rate > 0.0 && self.rate.is_finite()) {
                return Err("--rate must be a positive number".into());
            }
            if self.publishers == 0 {
                return Err("--publishers must be at least 1".into());
            }
            if !(self.duration > 0.0 && self.duration.is_finite()) {
                return Err("--duration must be positive".into());
            }
        }
        for (name, v) in [
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--idle", self.idle),
            ("--handshake-timeout", self.handshake_timeout),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("{name} must be a non-negative number"));
            }
        }
        Ok(())
    }

    /// `--rates` parsed.
    pub fn rate_list(&self) -> Result<Vec<f64>, String> {
        let rates: Result<Vec<f64>, _> = self
            .rates
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .map(|r| r.trim().parse::<f64>())
            .collect();
        match rates {
            Ok(r) if !r.is_empty() && r.iter().all(|v| *v > 0.0 && v.is_finite()) => Ok(r),
            _ => Err(format!(
                "--rates {:?}: need positive numbers, comma separated",
                self.rates
            )),
        }
    }

    /// Channel names in use, index = channel number.
    pub fn channel_names(&self) -> Vec<String> {
        if self.channels == 1 {
            vec![self.channel.clone()]
        } else {
            (0..self.channels)
                .map(|i| format!("{}-{i}", self.channel))
                .collect()
        }
    }

    /// Full WebSocket URL a client connects to.
    pub fn ws_url(&self) -> String {
        format!(
            "{}/app/{}?protocol={}&client=bench&version=1.0",
            self.url.trim_end_matches('/'),
            self.key,
            self.protocol
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let a = Args::parse_from(["sockudo-bench"]);
        assert!(a.validate().is_ok());
        assert_eq!(
            a.ws_url(),
            "ws://127.0.0.1:6001/app/app-key?protocol=7&client=bench&version=1.0"
        );
        assert_eq!(a.channel_names(), vec!["bench".to_string()]);
    }

    #[test]
    fn spread_channels_and_connect_only() {
        let a = Args::parse_from([
            "sockudo-bench",
            "--channels",
            "3",
            "--mode",
            "connect-only",
            "--rate",
            "0",
        ]);
        assert!(a.validate().is_ok());
        assert_eq!(a.channel_names(), vec!["bench-0", "bench-1", "bench-2"]);
        let b = Args::parse_from(["sockudo-bench", "--rate", "0"]);
        assert!(b.validate().is_err());
    }
}
