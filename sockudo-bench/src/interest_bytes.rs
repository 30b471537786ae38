//! `--mode interest-bytes`: what interest routing saves on the wire.
//!
//! For each broker (a `redis-server`, a `nats-server` and a 3-primary Redis Cluster started here
//! on free ports) and each
//! routing mode (per-channel topics, broadcast-to-all), 3 in-process `ClusterAdapter`s are
//! started; node `i` "has subscribers" on channels `i, i+3, i+6, …` of `--channels` (each
//! node watches its own third, as a node would for its local subscribers). Then
//! `--connections` broadcasts of `--payload-bytes` go out round-robin over all
//! channels, publish `j` from node `(j / 3) % 3`, so each node publishes to every node's
//! channels alike (a third of the time to its own). Reported per publish: messages and bytes the broker delivered
//! to the nodes (each node's `ClusterStats::received_*`, own echoes included), and the
//! cross-node share (echoes excluded). Expected: routing delivers each message once (to the
//! node with subscribers), broadcast-to-all three times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sockudo_core::adapter::{
    Adapter, Broadcast, ClusterAdapter, ClusterAnswer, ClusterOptions, ClusterQuery,
    ControlMessage, MemoryPresenceStore, NatsTransport, NatsTransportOptions, NodeHandler,
    PresenceStore, RedisClusterTransport, RedisTransport, RemovedMember, Transport,
};

use crate::cli::Args;
use crate::procs;

const NODES: usize = 3;

/// Counts deliveries to the node's local subscribers.
#[derive(Debug, Default)]
struct Counter {
    delivered: AtomicU64,
}

impl NodeHandler for Counter {
    fn deliver(&self, _msg: &Broadcast) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    fn control(&self, _msg: &ControlMessage) {}
    fn answer(&self, _query: &ClusterQuery) -> ClusterAnswer {
        ClusterAnswer::Count { count: 0 }
    }
    fn members_removed(&self, _removed: Vec<RemovedMember>) {}
}

/// One measured configuration.
#[derive(Debug)]
struct Row {
    broker: &'static str,
    routing: bool,
    publishes: u64,
    delivered: u64,
    messages: u64,
    bytes: u64,
    cross_bytes: u64,
}

fn channel(k: usize) -> String {
    format!("bench-{k}")
}

async fn measure<T: Transport>(
    broker: &'static str,
    routing: bool,
    transports: Vec<Arc<T>>,
    args: &Args,
) -> Result<Row, String> {
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    let opts = ClusterOptions {
        prefix: format!("bench{:08x}", rand_u32()),
        interest_routing: routing,
        ..ClusterOptions::default()
    };
    let channels = args.channels.max(NODES);
    let mut nodes = Vec::new();
    for (i, t) in transports.into_iter().enumerate() {
        let a = ClusterAdapter::start(format!("n{i}"), t, presence.clone(), opts.clone())
            .await
            .map_err(|e| format!("{broker}: start node {i}: {e}"))?;
        let h = Arc::new(Counter::default());
        a.attach(h.clone());
        for k in (i..channels).step_by(NODES) {
            a.watch_channel("app", &channel(k))
                .await
                .map_err(|e| format!("{broker}: watch: {e}"))?;
        }
        nodes.push((a, h));
    }
    let frame = Bytes::from(vec![b'x'; args.payload_bytes.max(1)]);
    let publishes = args.connections.max(1) as u64;
    let before: Vec<_> = nodes.iter().map(|(a, _)| a.stats()).collect();
    let origin = |j: usize| (j / NODES) % NODES;
    let owner = |j: usize| (j % channels) % NODES;
    for j in 0..publishes as usize {
        let b = Broadcast::plain("app", &channel(j % channels), frame.clone(), None);
        nodes[origin(j)]
            .0
            .publish(b)
            .await
            .map_err(|e| format!("{broker}: publish: {e}"))?;
    }
    // Every publish is delivered once to the node that watches its channel.
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = |nodes: &[(Arc<ClusterAdapter<T>>, Arc<Counter>)]| {
        nodes
            .iter()
            .map(|(_, h)| h.delivered.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    // The origin always delivers locally first; then, with broadcast-to-all, every other
    // node; with routing, the channel's watcher when it is another node.
    let want = if routing {
        publishes
            + (0..publishes as usize)
                .filter(|&j| owner(j) != origin(j))
                .count() as u64
    } else {
        publishes * NODES as u64
    };
    while delivered(&nodes) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let stragglers (messages nobody delivers, e.g. to non-watchers) land in the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut row = Row {
        broker,
        routing,
        publishes,
        delivered: delivered(&nodes),
        messages: 0,
        bytes: 0,
        cross_bytes: 0,
    };
    for ((a, _), b) in nodes.iter().zip(before) {
        let s = a.stats();
        let msgs = s.received_messages - b.received_messages;
        let bytes = s.received_bytes - b.received_bytes;
        let echoes = s.echoes_dropped - b.echoes_dropped;
        row.messages += msgs;
        row.bytes += bytes;
        // Echoes are this node's own publishes: their size is the average message size.
        let avg = bytes.checked_div(msgs).unwrap_or(0);
        row.cross_bytes += bytes.saturating_sub(echoes * avg);
    }
    Ok(row)
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id()
}

/// Run the mode; returns the report text.
pub async fn run(args: &Args) -> Result<String, String> {
    let dir = procs::scratch_dir()?;
    let redis = procs::start_redis(&dir).await?;
    let nats = procs::start_nats(&dir).await?;
    let (redis_cluster, cluster_seeds) = procs::start_redis_cluster(&dir).await?;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let mut rows = Vec::new();
    for routing in [true, false] {
        let mut ts = Vec::new();
        for _ in 0..NODES {
            ts.push(Arc::new(
                RedisTransport::connect(&redis_url)
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        rows.push(measure("redis", routing, ts, args).await?);
        let mut ts = Vec::new();
        for _ in 0..NODES {
            let opts = NatsTransportOptions {
                servers: vec![nats_url.clone()],
                ..NatsTransportOptions::default()
            };
            ts.push(Arc::new(
                NatsTransport::connect(opts)
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        rows.push(measure("nats", routing, ts, args).await?);
        let mut ts = Vec::new();
        for _ in 0..NODES {
            ts.push(Arc::new(
                RedisClusterTransport::connect(&cluster_seeds)
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        rows.push(measure("redis-cluster", routing, ts, args).await?);
    }
    let mut out = format!(
        "interest-bytes: {NODES} nodes, {} channels (disjoint thirds), {} publishes of {} B\n\
         {:<13} {:<10} {:>10} {:>14} {:>14} {:>20}\n",
        args.channels.max(NODES),
        args.connections.max(1),
        args.payload_bytes.max(1),
        "broker",
        "routing",
        "delivered",
        "msgs/publish",
        "bytes/publish",
        "cross-node B/publish"
    );
    for r in &rows {
        let p = r.publishes as f64;
        out.push_str(&format!(
            "{:<13} {:<10} {:>10} {:>14.2} {:>14.1} {:>20.1}\n",
            r.broker,
            if r.routing { "interest" } else { "broadcast" },
            r.delivered,
            r.messages as f64 / p,
            r.bytes as f64 / p,
            r.cross_bytes as f64 / p,
        ));
    }
    drop((redis, nats, redis_cluster));
    Ok(out)
}
