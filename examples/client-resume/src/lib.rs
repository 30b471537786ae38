//! The two flows of the `client-resume` example (see `main.rs` for how to run them):
//!
//! - [`follow`]: a V2 [`Client`] subscribed to one channel of a running node, printing every
//!   message with its serial and what each reconnect's resume proved ([`Tracker`]).
//! - [`run_cluster`]: the same client against a 2-node cluster with Redis started in-process
//!   by sockudo-testkit; a steady stream is published, the node the client is on is killed,
//!   and the client resumes on the other one. The [`ClusterReport`] counts what was lost and
//!   what was delivered twice (both 0 when resume works).
//!
//! Messages are published through the signed Pusher HTTP API ([`Publisher`]) with `data` the
//! message's sequence number, so the receiver can tell a gap from a duplicate by `data` alone,
//! independently of the serials it is checking.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::json;
use sockudo_client::{
    ChannelEvent, Client, ClientEvent, ClientOptions, ConnectionState, ConstantBackoff, Protocol,
    RecoveryFailure,
};
use sockudo_core::auth::sign_api_request;
use sockudo_testkit::{Cluster, APP_ID, APP_KEY, APP_SECRET};

/// The error type of the example's flows.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The event name of the published stream.
pub const EVENT: &str = "tick";

/// Publishes events through the Pusher HTTP API, signing each request with the app secret
/// (as a backend does with the `pusher` SDKs).
#[derive(Debug, Clone)]
pub struct Publisher {
    /// `http://host:port`.
    origin: String,
    /// A mount prefix such as `/realtime` (empty at the root); it is part of the signed path.
    prefix: String,
    app_id: String,
    key: String,
    secret: String,
    http: reqwest::Client,
}

impl Publisher {
    /// `base` is the node's HTTP URL (`http://127.0.0.1:6001`), possibly with the prefix the
    /// node is mounted under (`http://127.0.0.1:3000/realtime`); `ws://` is read as `http://`.
    pub fn new(base: &str, app_id: &str, key: &str, secret: &str) -> Publisher {
        let base = base.trim_end_matches('/');
        let base = match base.strip_prefix("ws://") {
            Some(rest) => format!("http://{rest}"),
            None => base.replacen("wss://", "https://", 1),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let (origin, prefix) = match base[authority_start..].find('/') {
            Some(i) => base.split_at(authority_start + i),
            None => (base.as_str(), ""),
        };
        Publisher {
            origin: origin.to_owned(),
            prefix: prefix.to_owned(),
            app_id: app_id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST {prefix}/apps/{id}/events` with one event; an error unless the answer is 2xx.
    pub async fn publish(&self, channel: &str, event: &str, data: &str) -> Result<(), BoxError> {
        let path = format!("{}/apps/{}/events", self.prefix, self.app_id);
        let body = json!({ "name": event, "channel": channel, "data": data }).to_string();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let query = sign_api_request(
            &self.key,
            &self.secret,
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now,
        );
        let response = self
            .http
            .post(format!("{}{path}?{query}", self.origin))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("publish answered {status}: {text}").into());
        }
        Ok(())
    }
}

/// What a subscriber saw: every sequence number (how often), resumes, and serial continuity.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: BTreeMap<u64, u32>,
    last_position: Option<(String, u64)>,
    /// Messages the resumes replayed (the sum of `Recovered { replayed }`).
    pub replayed: u64,
    /// Resumes that proved continuity.
    pub recoveries: u32,
    /// Resumes that could not.
    pub failures: Vec<RecoveryFailure>,
    /// Times a message's serial was not the previous one + 1 in the same stream.
    pub serial_gaps: u64,
    /// Messages whose `data` was not a sequence number (published by someone else).
    pub foreign: u64,
}

impl Tracker {
    /// Record `event`; returns the line to print about it.
    pub fn on_event(&mut self, event: &ChannelEvent) -> String {
        match event {
            ChannelEvent::Message(m) => {
                let serial = m.serial.map_or_else(|| "-".to_owned(), |s| s.to_string());
                let stream = m.stream_id.as_deref().unwrap_or("-");
                let mut note = String::new();
                if let (Some(stream_id), Some(serial)) = (&m.stream_id, m.serial) {
                    match &self.last_position {
                        Some((last_stream, last))
                            if last_stream == stream_id && serial != last + 1 =>
                        {
                            self.serial_gaps += 1;
                            note = format!("  <- serial gap: expected {}", last + 1);
                        }
                        Some((last_stream, _)) if last_stream != stream_id => {
                            note = "  <- new stream".to_owned()
                        }
                        _ => {}
                    }
                    self.last_position = Some((stream_id.clone(), serial));
                }
                match m.data_str().and_then(|d| d.parse::<u64>().ok()) {
                    Some(seq) => {
                        let count = self.seen.entry(seq).or_insert(0);
                        *count += 1;
                        if *count > 1 {
                            note.push_str("  <- DUPLICATE");
                        }
                    }
                    None => self.foreign += 1,
                }
                format!(
                    "serial {serial:>5}  {} {} {}  (stream {stream}){note}",
                    m.channel, m.event, m.data
                )
            }
            ChannelEvent::Recovered { source, replayed } => {
                self.recoveries += 1;
                self.replayed += replayed;
                format!("* resumed from the {source} tier: {replayed} missed message(s) replayed, no gap")
            }
            ChannelEvent::RecoveryFailed(f) => {
                self.failures.push(f.clone());
                // Live messages now start a new count; the old position means nothing any more.
                self.last_position = None;
                format!(
                    "* RecoveryFailed({}) on {}: {}",
                    f.code,
                    f.channel,
                    explain_failure(f)
                )
            }
            ChannelEvent::Resubscribed => {
                "* resubscribed without resume (protocol 7): messages may have been missed"
                    .to_owned()
            }
            other => format!("* {other:?}"),
        }
    }

    /// Distinct sequence numbers received.
    pub fn unique(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Deliveries beyond the first of each sequence number.
    pub fn duplicates(&self) -> u64 {
        self.seen
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Sequence numbers in `1..=published` never received.
    pub fn lost(&self, published: u64) -> u64 {
        (1..=published)
            .filter(|seq| !self.seen.contains_key(seq))
            .count() as u64
    }
}

/// A sentence on what a resume failure means for the application.
pub fn explain_failure(f: &RecoveryFailure) -> String {
    match f.code.as_str() {
        "stream_reset" => format!(
            "the channel's stream changed ({} -> {}): the node lost its history (memory history does not survive a restart), so \
             nothing proves what was published while this client was away. Live messages continue on the new stream; reload \
             state or backfill with Client::history. A shared history store (Redis) keeps the stream across restarts.",
            f.expected_stream_id.as_deref().unwrap_or("?"),
            f.current_stream_id.as_deref().unwrap_or("?")
        ),
        "position_expired" => format!(
            "the missed messages are older than the retained history (oldest available serial {:?}); reload state",
            f.oldest_available_serial
        ),
        _ => f.reason.clone().unwrap_or_else(|| "continuity cannot be proven; reload state".to_owned()),
    }
}

/// Options of [`follow`].
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The node's WebSocket base URL, e.g. `ws://127.0.0.1:6001` (or `…/realtime` when mounted).
    pub url: String,
    /// The channel to follow.
    pub channel: String,
    /// Also publish a numbered `tick` every this often (through the node's HTTP API).
    pub publish_every: Option<Duration>,
}

/// Subscribe to `opts.channel` with protocol V2 and print everything until Ctrl-C.
pub async fn follow(opts: FollowOptions) -> Result<(), BoxError> {
    let client_opts = ClientOptions::new(APP_KEY)
        .url(&opts.url)?
        .protocol(Protocol::V2);
    let client = Client::connect(client_opts).await?;
    let mut sub = client.subscribe(opts.channel.as_str()).await?;
    println!(
        "subscribed to {} on {} (protocol V2); Ctrl-C to stop",
        opts.channel, opts.url
    );

    let publisher = opts.publish_every.map(|every| {
        let publisher = Publisher::new(&opts.url, APP_ID, APP_KEY, APP_SECRET);
        let channel = opts.channel.clone();
        println!("publishing a numbered `{EVENT}` every {every:?}");
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                tokio::time::sleep(every).await;
                seq += 1;
                if let Err(e) = publisher.publish(&channel, EVENT, &seq.to_string()).await {
                    println!("! publish #{seq} failed: {e}");
                }
            }
        })
    });

    let mut tracker = Tracker::default();
    let mut events = client.events();
    loop {
        tokio::select! {
            event = sub.next() => match event {
                Some(event) => println!("{}", tracker.on_event(&event)),
                None => break,
            },
            Ok(event) = events.recv() => match event {
                ClientEvent::State(ConnectionState::Disconnected { code, reason, retry_in }) => {
                    println!("* disconnected ({reason}, code {code:?}); reconnecting in {retry_in:?}");
                }
                ClientEvent::State(ConnectionState::Connected { socket_id, .. }) => println!("* connected as {socket_id}"),
                ClientEvent::State(ConnectionState::Failed { reason, .. }) => {
                    println!("* connection failed for good: {reason}");
                    break;
                }
                _ => {}
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if let Some(task) = publisher {
        task.abort();
    }
    let stats = client.stats();
    println!(
        "received {} distinct message(s), {} duplicate(s); resumes: {} ok, {} failed; {} duplicate(s) dropped by the client",
        tracker.unique(),
        tracker.duplicates(),
        stats.resumes_succeeded,
        stats.resumes_failed,
        stats.duplicates_dropped
    );
    client.close().await?;
    Ok(())
}

/// Options of [`run_cluster`].
#[derive(Debug, Clone)]
pub struct ClusterDemo {
    /// The channel published on and followed.
    pub channel: String,
    /// Messages published before the client's node is killed.
    pub before_kill: u64,
    /// Messages published from the kill on.
    pub after_kill: u64,
    /// Pause between two publishes.
    pub interval: Duration,
    /// Print every message (the summary is always returned).
    pub verbose: bool,
}

impl Default for ClusterDemo {
    fn default() -> Self {
        ClusterDemo {
            channel: "ticker".into(),
            before_kill: 20,
            after_kill: 40,
            interval: Duration::from_millis(20),
            verbose: true,
        }
    }
}

/// What [`run_cluster`] observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterReport {
    /// Messages published (all acknowledged by the node).
    pub published: u64,
    /// Distinct messages the client received.
    pub received: u64,
    /// Messages the resume replayed.
    pub recovered: u64,
    /// Published messages never received.
    pub lost: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Resumes that proved continuity, and those that failed.
    pub recoveries: u32,
    /// Resumes that failed (see above).
    pub recovery_failures: u32,
    /// Serial discontinuities within one stream.
    pub serial_gaps: u64,
    /// The node the client was on (killed), and the node it resumed on.
    pub killed_node: usize,
    /// The node it resumed on (see above).
    pub resumed_on: Option<usize>,
}

impl ClusterReport {
    /// `recovered N messages, L lost, D duplicates`.
    pub fn summary(&self) -> String {
        format!(
            "recovered {} messages, {} lost, {} duplicates",
            self.recovered, self.lost, self.duplicates
        )
    }
}

/// How long, after the last publish, the client may take to receive everything.
const SETTLE: Duration = Duration::from_secs(10);

/// Start 2 nodes + Redis in-process, subscribe a V2 client through the cluster's balancer,
/// publish a steady stream on the other node, kill the client's node midway, and count what
/// the client received once it has resumed on the surviving node.
///
/// Needs `redis-server` on PATH. The nodes share Redis for fanout and for the V2 history, so
/// the surviving node can prove the client's position and replay what it missed.
pub async fn run_cluster(demo: ClusterDemo) -> Result<ClusterReport, BoxError> {
    let say = |line: &str| {
        if demo.verbose {
            println!("{line}");
        }
    };
    let mut cluster = Cluster::builder().nodes(2).redis(true).build().await?;
    say(&format!(
        "cluster: node-0 {}, node-1 {}, balancer {}",
        cluster.node(0).addr(),
        cluster.node(1).addr(),
        cluster.balancer().addr()
    ));

    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", cluster.balancer().addr()))?
        .protocol(Protocol::V2)
        .backoff(ConstantBackoff(Duration::from_millis(250)));
    let client = Client::connect(opts).await?;
    let mut sub = client.subscribe(demo.channel.as_str()).await?;
    let killed_node = node_holding_the_client(&cluster, None).await?;
    let survivor = 1 - killed_node;
    say(&format!(
        "client subscribed to {} on node-{killed_node}; publishing through node-{survivor}",
        demo.channel
    ));

    // The publisher runs on its own task and asks for the kill when `before_kill` are out.
    let publisher = Publisher::new(
        &cluster.node(survivor).http_url(),
        APP_ID,
        APP_KEY,
        APP_SECRET,
    );
    let (kill_tx, mut kill_rx) = tokio::sync::oneshot::channel::<()>();
    let total = demo.before_kill + demo.after_kill;
    let (channel, interval, before_kill) = (demo.channel.clone(), demo.interval, demo.before_kill);
    let mut publishing = tokio::spawn(async move {
        let mut kill_tx = Some(kill_tx);
        for seq in 1..=total {
            if seq > before_kill {
                if let Some(tx) = kill_tx.take() {
                    let _ = tx.send(());
                }
            }
            publisher.publish(&channel, EVENT, &seq.to_string()).await?;
            tokio::time::sleep(interval).await;
        }
        Ok::<u64, BoxError>(total)
    });

    let mut tracker = Tracker::default();
    let mut published: Option<u64> = None;
    let mut kill_pending = true;
    let mut deadline = tokio::time::Instant::now()
        + interval * u32::try_from(total).unwrap_or(u32::MAX)
        + SETTLE * 2;
    loop {
        if published.is_some_and(|n| tracker.unique() >= n) {
            break;
        }
        tokio::select! {
            event = sub.next() => match event {
                Some(event) => {
                    let line = tracker.on_event(&event);
                    say(&line);
                }
                None => return Err("the subscription ended".into()),
            },
            kill = &mut kill_rx, if kill_pending => {
                kill_pending = false;
                if kill.is_ok() {
                    say(&format!("*** killing node-{killed_node} (no close frame: a crash) after {before_kill} messages"));
                    cluster.kill_node(killed_node)?;
                }
            }
            done = &mut publishing, if published.is_none() => {
                let n = done??;
                published = Some(n);
                say(&format!("publisher done: {n} messages acknowledged"));
                deadline = tokio::time::Instant::now() + SETTLE;
            }
            _ = tokio::time::sleep_until(deadline) => {
                say("timed out waiting for the remaining messages");
                break;
            }
        }
    }
    let published = match published {
        Some(n) => n,
        None => {
            publishing.abort();
            return Err("the publisher did not finish in time".into());
        }
    };
    let resumed_on = node_holding_the_client(&cluster, Some(killed_node))
        .await
        .ok();
    client.close().await?;

    Ok(ClusterReport {
        published,
        received: tracker.unique(),
        recovered: tracker.replayed,
        lost: tracker.lost(published),
        duplicates: tracker.duplicates(),
        recoveries: tracker.recoveries,
        recovery_failures: u32::try_from(tracker.failures.len()).unwrap_or(u32::MAX),
        serial_gaps: tracker.serial_gaps,
        killed_node,
        resumed_on,
    })
}

/// The index of the one live node holding a connection (our client's), waiting up to 3 s for
/// it to be counted. A killed node's counters are frozen, so it is skipped.
async fn node_holding_the_client(
    cluster: &Cluster,
    skip: Option<usize>,
) -> Result<usize, BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let holders: Vec<usize> = (0..cluster.nodes().len())
            .filter(|i| Some(*i) != skip)
            .filter(|i| {
                cluster
                    .node(*i)
                    .as_in_process()
                    .is_some_and(|n| n.node().total_connections() > 0)
            })
            .collect();
        if let [one] = holders.as_slice() {
            return Ok(*one);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("expected one node to hold the client, found {holders:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
