//! The one way every Redis-backed part connects (feature `redis`): to a single server or to a
//! Redis Cluster, behind one connection type.
//!
//! - **Single server**: a `ConnectionManager` reconnects by itself: an immediate attempt, then
//!   two more about 1–2 s apart; a later command that hits an I/O error starts a new round, so
//!   a restarted Redis is picked up within about 2 s while a dead one costs about one attempt
//!   per second.
//! - **Cluster**: a cluster connection keeps one multiplexed connection per primary, routes
//!   every command by the hash slot of its first key, follows `MOVED`/`ASK` redirections and
//!   refreshes the slot map when a primary fails over, retrying a command up to 3 times in
//!   the meantime. Every multi-key script of the stores here touches keys of one hash tag, so
//!   it runs on one slot.
//!
//! Connecting also proves the server answers (`PING`), so a node with an unreachable Redis
//! fails at start with a clear error instead of at its first request.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Value};

/// Where a Redis-backed store connects: one server, or the seed nodes of a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// `redis://[user:password@]host:port[/db]`.
    Single(String),
    /// Seed nodes of one Redis Cluster (`redis://host:port` each; any reachable one is enough
    /// to discover the others, more seeds survive one being down at start).
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// The endpoint with credentials removed, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            RedisEndpoint::Single(url) => redact(url),
            RedisEndpoint::Cluster(nodes) => {
                let shown: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
                format!("cluster[{}]", shown.join(","))
            }
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisEndpoint::Cluster(_))
    }
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<&str> for RedisEndpoint {
    fn from(url: &str) -> Self {
        RedisEndpoint::Single(url.to_owned())
    }
}

impl From<String> for RedisEndpoint {
    fn from(url: String) -> Self {
        RedisEndpoint::Single(url)
    }
}

impl From<&String> for RedisEndpoint {
    fn from(url: &String) -> Self {
        RedisEndpoint::Single(url.clone())
    }
}

/// `scheme://user:password@host/…` → `scheme://***@host/…`.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// A reconnecting connection to one server or to a cluster; cheap to clone (clones share the
/// underlying connections).
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisConn::Single(_) => f.write_str("RedisConn::Single"),
            RedisConn::Cluster(_) => f.write_str("RedisConn::Cluster"),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connect to `endpoint` with per-command `op_timeout`; the whole connect + `PING` must
/// finish within `connect_timeout`. The error is a one-line message for the caller's error
/// type.
pub(crate) async fn connect(
    endpoint: &RedisEndpoint,
    op_timeout: Duration,
    connect_timeout: Duration,
) -> Result<RedisConn, String> {
    let connect = async {
        let mut conn = match endpoint {
            RedisEndpoint::Single(url) => RedisConn::Single(single(url, op_timeout).await?),
            RedisEndpoint::Cluster(nodes) => {
                RedisConn::Cluster(cluster(nodes, op_timeout, None).await?)
            }
        };
        let _: Value = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(conn)
    };
    match tokio::time::timeout(connect_timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "redis {} did not answer within {} ms",
            endpoint.redacted(),
            connect_timeout.as_millis()
        )),
    }
}

async fn single(url: &str, op_timeout: Duration) -> Result<ConnectionManager, String> {
    let client = Client::open(url).map_err(|e| format!("invalid redis url: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout))
        .set_response_timeout(Some(op_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(500))
        .set_exponent_base(2.0)
        .set_max_delay(Duration::from_millis(1000));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| e.to_string())
}

/// A cluster connection; with `push`, RESP3 and every push (sharded pub/sub messages) goes to
/// that sender.
pub(crate) async fn cluster(
    nodes: &[String],
    op_timeout: Duration,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<ClusterConnection, String> {
    if nodes.is_empty() {
        return Err("a Redis Cluster needs at least one seed node".into());
    }
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(op_timeout)
        .response_timeout(op_timeout)
        .retries(3)
        .min_retry_wait(100)
        .max_retry_wait(1000);
    if let Some(tx) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    let client = builder
        .build()
        .map_err(|e| format!("invalid redis cluster nodes: {e}"))?;
    client
        .get_async_connection()
        .await
        .map_err(|e| e.to_string())
}
