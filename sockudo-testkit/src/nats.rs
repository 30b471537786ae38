//! [`NatsCluster`]: throwaway `nats-server` child processes on random loopback ports — one
//! server, or several joined by routes into one NATS cluster — killed when dropped.
//!
//! Each server keeps its ports for the life of the value, so [`NatsCluster::kill`] followed by
//! [`NatsCluster::start_again`] looks, to a client, like that server coming back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{free_port, kill_and_reap, log_tail, loopback, on_path, scratch_dir};
use crate::TestkitError;

/// How long a fresh server gets to greet clients (and, in a cluster, to see its routes).
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Server {
    client_port: u16,
    route_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// One or more `nats-server`s (core NATS, no JetStream); with more than one, every server
/// routes to every other, so a message published on one reaches subscribers on all.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Server>,
    dir: PathBuf,
}

impl NatsCluster {
    /// One server on a free port.
    pub async fn start() -> Result<NatsCluster, TestkitError> {
        Self::start_cluster(1).await
    }

    /// `n` servers forming one NATS cluster; ready when each greets clients and sees its
    /// `n - 1` routes.
    pub async fn start_cluster(n: usize) -> Result<NatsCluster, TestkitError> {
        if !on_path("nats-server") {
            return Err(TestkitError::ProgramNotFound {
                program: "nats-server",
                hint: "install it (`apt-get install nats-server`)",
            });
        }
        if n == 0 {
            return Err(TestkitError::Usage("a NATS cluster needs a server".into()));
        }
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(Server {
                client_port: free_port()?,
                route_port: free_port()?,
                monitor_port: free_port()?,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            servers,
            dir: scratch_dir("nats")?,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// How many servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Never true (a cluster has at least one server); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `nats://127.0.0.1:P` of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.addr(i))
    }

    /// Every server's URL, comma-separated, starting with server `first` (the `NATS_URL` of a
    /// node that should prefer that server).
    pub fn urls_from(&self, first: usize) -> String {
        let n = self.servers.len();
        (0..n)
            .map(|k| self.url((first + k) % n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client address of server `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        loopback(self.servers[i % self.servers.len()].client_port)
    }

    /// Whether server `i`'s process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.servers[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill server `i` (SIGKILL) and reap it.
    pub fn kill(&mut self, i: usize) -> Result<(), TestkitError> {
        if let Some(mut child) = self.servers[i].child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Start a killed server `i` again on its ports and wait until it is ready.
    pub async fn start_again(&mut self, i: usize) -> Result<(), TestkitError> {
        if self.is_running(i) {
            return Ok(());
        }
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    fn config(&self, i: usize) -> String {
        let s = &self.servers[i];
        let mut text = format!(
            "server_name: \"sockudo-test-{i}\"\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n",
            s.client_port, s.monitor_port
        );
        if self.servers.len() > 1 {
            let routes: Vec<String> = self
                .servers
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, o)| format!("\"nats-route://127.0.0.1:{}\"", o.route_port))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: \"sockudo-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                s.route_port,
                routes.join(", ")
            ));
        }
        text
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("nats-{i}.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), TestkitError> {
        let conf = self.dir.join(format!("nats-{i}.conf"));
        std::fs::write(&conf, self.config(i))
            .map_err(|e| TestkitError::io(format!("write {}", conf.display()), e))?;
        let log = self.log_path(i);
        let log_file = std::fs::File::create(&log)
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io("spawn nats-server", e))?;
        self.servers[i].child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let want_routes = self.servers.len() - 1;
        loop {
            if let Some(child) = self.servers[i].child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll nats-server", e))?
                {
                    self.servers[i].child = None;
                    return Err(TestkitError::ProcessExited {
                        what: format!("nats-server {i}"),
                        status,
                        log_tail: log_tail(&self.log_path(i), 10),
                    });
                }
            }
            if greets(self.addr(i)).await
                && routes(loopback(self.servers[i].monitor_port)).await >= Some(want_routes)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    format!("nats-server {i} to greet clients and see {want_routes} routes"),
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            let _ = self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the server at `addr` sends its `INFO` greeting.
async fn greets(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        (&buf == b"INFO").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(()))
    )
}

/// `num_routes` from the monitoring endpoint `/routez`, if it answers.
async fn routes(monitor: SocketAddr) -> Option<usize> {
    let attempt = async {
        let mut stream = TcpStream::connect(monitor).await.ok()?;
        stream
            .write_all(b"GET /routez HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let json = &text[text.find("\r\n\r\n")? + 4..];
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v["num_routes"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}
