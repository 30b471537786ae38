//! Child processes for the multi-process modes: a throwaway `redis-server` and `sockudo`
//! nodes on free loopback ports, configured through the environment (docs/configuration.md names) and
//! optionally a TOML file. Each child is SIGKILLed when its [`Proc`] is dropped.
//!
//! The children inherit this process's raised `RLIMIT_NOFILE`, so a node can hold as many
//! sockets as the tool opens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh child gets to answer (PING / `GET /health`).
const START_TIMEOUT: Duration = Duration::from_secs(20);

use sockudo_server::config::ENV_VARS as CONFIG_VARS;

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    what: String,
    child: Option<Child>,
    /// Loopback port it listens on.
    pub port: u16,
    /// Its stdout + stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:port`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:port`.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr())
    }

    /// SIGKILL and reap (a crash). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited with {status}; log tail:\n{}",
                self.what,
                log_tail(&self.log, 15)
            )),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (bound and released: a tiny race, acceptable for a bench).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot pick a free port: {e}"))
}

/// Whether `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// A scratch directory for logs and config files of this run.
pub fn scratch_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("sockudo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn open_log(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("clone log handle: {e}"))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Start `redis-server` without persistence on a free port and wait for PING.
pub async fn start_redis(dir: &Path) -> Result<Proc, String> {
    let port = free_port()?;
    spawn_redis(dir, port, &[]).await
}

/// Start a Redis Cluster of three primaries (no replicas: benchmarks measure routing, not
/// failover) and wait until it serves every slot. Returns the servers and their seed URLs.
pub async fn start_redis_cluster(dir: &Path) -> Result<(Vec<Proc>, Vec<String>), String> {
    let mut servers = Vec::new();
    for _ in 0..3 {
        let port = loop {
            let p = free_port()?;
            if p < u16::MAX - 10_000
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
            {
                break p;
            }
        };
        let conf = dir.join(format!("nodes-{port}.conf"));
        let conf = conf.to_string_lossy().into_owned();
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            conf.as_str(),
        ];
        servers.push(spawn_redis(dir, port, &extra).await?);
    }
    let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
    create.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)));
    create.push("--cluster-yes".into());
    let out = Command::new("redis-cli")
        .args(&create)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run redis-cli --cluster create: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for s in &servers {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &s.port.to_string(), "CLUSTER", "INFO"])
                .output()
                .map_err(|e| format!("run redis-cli: {e}"))?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() >= deadline {
                return Err("the Redis Cluster did not form".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seeds = servers
        .iter()
        .map(|s| format!("redis://127.0.0.1:{}", s.port))
        .collect();
    Ok((servers, seeds))
}

async fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Result<Proc, String> {
    if !on_path("redis-server") {
        return Err("redis-server is not on PATH (apt-get install redis-server)".into());
    }
    let log = dir.join(format!("redis-{port}.log"));
    let (out, err) = open_log(&log)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let p = Proc {
        what: format!("redis-server on {port}"),
        child: Some(child),
        port,
        log,
    };
    await_probe(p, b"PING\r\n", b"+PONG").await
}

/// Wait until `p` answers `req` with a reply starting with `expect` (or exits, or
/// `START_TIMEOUT` passes).
async fn await_probe(mut p: Proc, req: &[u8], expect: &[u8]) -> Result<Proc, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(e) = p.exited() {
            return Err(e);
        }
        if probe(p.addr(), req, expect) {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            return Err(format!("{} did not answer", p.what));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start `nats-server` (core NATS) on a free port and wait for its `INFO` greeting.
pub async fn start_nats(dir: &Path) -> Result<Proc, String> {
    if !on_path("nats-server") {
        return Err("nats-server is not on PATH (apt-get install nats-server)".into());
    }
    let port = free_port()?;
    let log = dir.join(format!("nats-{port}.log"));
    let (out, err) = open_log(&log)?;
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn nats-server: {e}"))?;
    let p = Proc {
        what: format!("nats-server on {port}"),
        child: Some(child),
        port,
        log,
    };
    await_probe(p, b"", b"INFO").await
}

/// Where the `sockudo` binary is: `explicit` (from `--sockudo-bin` / `SOCKUDO_BIN`), else
/// `$CARGO_TARGET_DIR/release/sockudo`, else `target/release/sockudo`.
pub fn sockudo_bin(explicit: Option<&str>) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release").join("sockudo"));
    }
    candidates.push(PathBuf::from("target/release/sockudo"));
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no sockudo binary at {candidates:?}: run `cargo build --release -p sockudo-server --bin sockudo` \
             and pass --sockudo-bin (or SOCKUDO_BIN)"
        )
    })
}

/// Start a `sockudo` node on a free port with `env` (docs/configuration.md names) on top of
/// `HOST=127.0.0.1 METRICS_PORT=0 SHUTDOWN_GRACE_PERIOD=0 RUST_LOG=warn`, and `--config` if
/// given; wait for `GET /health` = 200.
pub async fn start_node(
    bin: &Path,
    dir: &Path,
    name: &str,
    env: &[(String, String)],
    config: Option<&Path>,
) -> Result<Proc, String> {
    let port = free_port()?;
    let log = dir.join(format!("{name}-{port}.log"));
    let (out, err) = open_log(&log)?;
    let mut cmd = Command::new(bin);
    for v in CONFIG_VARS {
        cmd.env_remove(v);
    }
    cmd.env("HOST", "127.0.0.1")
        .env("METRICS_PORT", "0")
        .env("SHUTDOWN_GRACE_PERIOD", "0")
        .env("RUST_LOG", "warn")
        .env("SOCKUDO_NODE_ID", name)
        .env("PORT", port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut p = Proc {
        what: format!("sockudo {name} on {port}"),
        child: Some(child),
        port,
        log,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(e) = p.exited() {
            return Err(e);
        }
        if probe(
            p.addr(),
            b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            b"HTTP/1.1 200",
        ) || probe(
            p.addr(),
            b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            b"HTTP/1.0 200",
        ) {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sockudo {name} on {port} did not answer GET /health; log tail:\n{}",
                log_tail(&p.log, 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Environment of a cluster node sharing Redis for adapter, cache and history (like the
/// testkit's `Cluster::builder().redis(true)`).
pub fn cluster_env(redis_url: &str) -> Vec<(String, String)> {
    [
        ("ADAPTER_DRIVER", "redis"),
        ("CACHE_DRIVER", "redis"),
        ("HISTORY_DRIVER", "redis"),
        ("REDIS_URL", redis_url),
        ("CLUSTER_HEARTBEAT_INTERVAL_MS", "500"),
        ("CLUSTER_NODE_TIMEOUT_MS", "3000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Blocking one-shot probe: connect, write `req`, true if the reply starts with `expect`.
fn probe(addr: SocketAddr, req: &[u8], expect: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(req).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < expect.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(expect)
}

/// CPU seconds (user + system) a process used so far, from `/proc/{pid}/stat`.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of `root` and every live descendant (a broker that runs under a wrapper, like
/// RabbitMQ's watchdog shell and its `beam.smp`). Processes that cannot be read count 0.
pub fn tree_cpu_secs(root: u32) -> f64 {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // The parent is the second field after the parenthesised command name.
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| {
                    let rest = t.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter().filter_map(|&p| cpu_secs(p)).sum()
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_secs(std::process::id()).is_some());
        // This process's tree holds at least this process.
        assert!(tree_cpu_secs(std::process::id()) >= cpu_secs(std::process::id()).unwrap_or(0.0));
        assert_ne!(loadavg(), "?");
    }
}
