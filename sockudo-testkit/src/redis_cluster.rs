//! [`RedisCluster`]: a throwaway Redis Cluster — `redis-server` child processes in cluster mode
//! on random loopback ports, joined by `redis-cli --cluster create` — killed when dropped.
//!
//! Each server keeps its port (and its cluster bus port, port + 10000) for the life of the
//! value, so [`RedisCluster::kill`] followed by [`RedisCluster::start_again`] looks, to the
//! cluster, like that server coming back (it rejoins from its `nodes.conf`, as a replica when
//! its replica was promoted meanwhile).

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::redis::ping;
use crate::util::{free_port, kill_and_reap, log_tail, loopback, on_path, scratch_dir};
use crate::TestkitError;

/// How long the cluster gets to form (every slot served, every replica in sync).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// A primary silent this long is failed over by its replica (`cluster-node-timeout`).
const NODE_TIMEOUT_MS: u64 = 2000;

#[derive(Debug)]
struct Server {
    port: u16,
    child: Option<Child>,
}

/// A Redis Cluster of `primaries` primaries with `replicas` replicas each.
#[derive(Debug)]
pub struct RedisCluster {
    servers: Vec<Server>,
    dir: PathBuf,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> Result<u16, TestkitError> {
    for _ in 0..200 {
        let port = free_port()?;
        if port > u16::MAX - 10_000 {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(TestkitError::Usage(
        "no free port pair (port, port + 10000) for a Redis Cluster node".into(),
    ))
}

impl RedisCluster {
    /// Three primaries, one replica each: the smallest cluster that survives a primary
    /// failure.
    pub async fn start() -> Result<RedisCluster, TestkitError> {
        Self::start_with(3, 1).await
    }

    /// `primaries` primaries (at least 3, as Redis requires) with `replicas` replicas each;
    /// returns once every slot is served and every replica is in sync with its primary.
    pub async fn start_with(
        primaries: usize,
        replicas: usize,
    ) -> Result<RedisCluster, TestkitError> {
        for program in ["redis-server", "redis-cli"] {
            if !on_path(program) {
                return Err(TestkitError::ProgramNotFound {
                    program,
                    hint: "install it (`apt-get install redis-server`)",
                });
            }
        }
        if primaries < 3 {
            return Err(TestkitError::Usage(
                "a Redis Cluster needs 3 primaries".into(),
            ));
        }
        let n = primaries * (1 + replicas);
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(Server {
                port: cluster_port()?,
                child: None,
            });
        }
        let mut cluster = RedisCluster {
            servers,
            dir: scratch_dir("redis-cluster")?,
        };
        for i in 0..n {
            cluster.start_again(i).await?;
        }
        cluster.create(replicas).await?;
        cluster.wait_formed().await?;
        Ok(cluster)
    }

    /// How many servers (primaries and replicas).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `redis://127.0.0.1:P` of every server, for `REDIS_CLUSTER_NODES` (any one suffices as
    /// a seed; all of them survive some being down).
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].port
    }

    /// Indices of the servers that are primaries now (asked of each running server).
    pub async fn primaries(&self) -> Result<Vec<usize>, TestkitError> {
        let mut out = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.child.is_none() {
                continue;
            }
            let role = cli(s.port, &["ROLE"]).await?;
            if role.lines().next() == Some("master") {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// The index of the primary serving `key`'s hash slot now.
    pub async fn primary_of(&self, key: &str) -> Result<usize, TestkitError> {
        let first = self
            .servers
            .iter()
            .find(|s| s.child.is_some())
            .ok_or_else(|| TestkitError::Usage("no server is running".into()))?;
        let slot = cli(first.port, &["CLUSTER", "KEYSLOT", key]).await?;
        let slot: u16 = slot
            .trim()
            .parse()
            .map_err(|_| TestkitError::Usage(format!("CLUSTER KEYSLOT answered {slot:?}")))?;
        for i in self.primaries().await? {
            let nodes = cli(self.servers[i].port, &["CLUSTER", "NODES"]).await?;
            if owns_slot(&nodes, slot) {
                return Ok(i);
            }
        }
        Err(TestkitError::Usage(format!(
            "no primary serves slot {slot}"
        )))
    }

    /// Kill server `i` (SIGKILL, like a crash). Its replica takes over after about
    /// `cluster-node-timeout` (2 s) plus an election.
    pub fn kill(&mut self, i: usize) -> Result<(), TestkitError> {
        if let Some(mut child) = self.servers[i].child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Start server `i` again on its ports (a no-op when running) and wait for `PING`.
    pub async fn start_again(&mut self, i: usize) -> Result<(), TestkitError> {
        if self.servers[i].child.is_some() {
            return Ok(());
        }
        let port = self.servers[i].port;
        let log = self.dir.join(format!("redis-{port}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io("spawn redis-server", e))?;
        self.servers[i].child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.servers[i].child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll redis-server", e))?
                {
                    self.servers[i].child = None;
                    return Err(TestkitError::ProcessExited {
                        what: format!("redis-server (cluster) on port {port}"),
                        status,
                        log_tail: log_tail(&log, 10),
                    });
                }
            }
            if ping(loopback(port)).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    format!("redis-server (cluster) on port {port} to answer PING"),
                    Duration::from_secs(10),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create(&self, replicas: usize) -> Result<(), TestkitError> {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.servers.iter().map(|s| format!("127.0.0.1:{}", s.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let mut cmd = Command::new("redis-cli");
        cmd.args(&args);
        let out = output(cmd)
            .await
            .map_err(|e| TestkitError::io("run redis-cli --cluster create", e))?;
        if !out.status.success() {
            return Err(TestkitError::Usage(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Wait until every running server reports `cluster_state:ok` and every replica's link
    /// to its primary is up (a replica that is not in sync cannot take over).
    pub async fn wait_formed(&self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            if self.formed().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    "the Redis Cluster to form",
                    FORM_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn formed(&self) -> bool {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            let Ok(info) = cli(s.port, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Ok(repl) = cli(s.port, &["INFO", "replication"]).await else {
                return false;
            };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        true
    }
}

/// Whether `CLUSTER NODES` text says `myself` serves `slot`.
fn owns_slot(nodes: &str, slot: u16) -> bool {
    let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    me.split_whitespace().skip(8).any(|range| {
        let mut parts = range.splitn(2, '-');
        let lo = parts.next().and_then(|p| p.parse::<u16>().ok());
        let hi = parts.next().and_then(|p| p.parse::<u16>().ok()).or(lo);
        matches!((lo, hi), (Some(lo), Some(hi)) if lo <= slot && slot <= hi)
    })
}

/// Run `redis-cli -p PORT args…` and return its output.
async fn cli(port: u16, args: &[&str]) -> Result<String, TestkitError> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let out = tokio::time::timeout(Duration::from_secs(5), output(cmd))
        .await
        .map_err(|_| TestkitError::timeout(format!("redis-cli -p {port}"), Duration::from_secs(5)))?
        .map_err(|e| TestkitError::io("run redis-cli", e))?;
    if !out.status.success() {
        return Err(TestkitError::Usage(format!(
            "redis-cli -p {port} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            let _ = self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run a short command to completion on a blocking thread (the testkit's own Tokio has no
/// `process` feature: programs that use the testkit need not enable it).
async fn output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::owns_slot;

    #[test]
    fn slot_ownership_is_read_from_cluster_nodes() {
        let text = "abc 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000\n\
                    def 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n";
        assert!(owns_slot(text, 0));
        assert!(owns_slot(text, 5460));
        assert!(owns_slot(text, 6000));
        assert!(!owns_slot(text, 5461));
    }
}
