//! [`ContainerNode`]: the `sockudo` binary in a container, configured only through the
//! environment names of docs/configuration.md (like [`ProcessNode`](crate::ProcessNode)).

use std::net::SocketAddr;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};

use super::engine::{short, DockerEngine};
use super::{container_name, env_strings, ContainerNetwork};
use crate::util::{free_port, loopback};
use crate::TestkitError;

/// How long a started container gets until `GET /health` answers 200.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a terminated node beyond its `SHUTDOWN_GRACE_PERIOD`.
const TERMINATE_SLACK: Duration = Duration::from_secs(15);
/// Ports tried when the picked one is taken before the node binds it (host networking).
const PORT_ATTEMPTS: usize = 4;
/// The node's port inside its own network namespace (bridge mode).
const BRIDGE_PORT: u16 = 6001;
/// Log lines quoted in errors.
const LOG_LINES: usize = 20;

/// A sockudo container, force-removed when dropped. `kill` is `docker kill` (SIGKILL: the
/// node's sockets drop without close frames); `restart` starts the same container again, on
/// the same port, with fresh state.
#[derive(Debug)]
pub struct ContainerNode {
    engine: DockerEngine,
    id: String,
    port: u16,
    env: Vec<(String, String)>,
}

impl ContainerNode {
    /// Start `image` with `env` on top of the test defaults (`METRICS_PORT=0`,
    /// `SHUTDOWN_GRACE_PERIOD=0`), listening on a free host port (or `PORT` from `env`, with
    /// host networking), then wait for `GET /health` = 200. `HOST` is set by the testkit
    /// (127.0.0.1 with host networking, 0.0.0.0 on the bridge).
    pub async fn start(
        engine: &DockerEngine,
        image: &str,
        network: ContainerNetwork,
        env: Vec<(String, String)>,
    ) -> Result<ContainerNode, TestkitError> {
        let fixed_port = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PORT")
            .map(|(_, v)| v.clone());
        let fixed_port = match (&fixed_port, network) {
            (Some(p), ContainerNetwork::Host) => Some(
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| TestkitError::Usage(format!("PORT={p:?} is not a port number")))?,
            ),
            _ => None,
        };
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let node_id = env
            .iter()
            .rev()
            .find(|(k, _)| k == "SOCKUDO_NODE_ID")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "node".into());
        let mut last_error = None;
        for attempt in 0..attempts {
            let port = match fixed_port {
                Some(p) => p,
                None => free_port()?,
            };
            let mut full: Vec<(String, String)> = vec![
                ("METRICS_PORT".into(), "0".into()),
                ("SHUTDOWN_GRACE_PERIOD".into(), "0".into()),
            ];
            full.extend(env.iter().cloned());
            let (host, inner_port) = match network {
                ContainerNetwork::Host => ("127.0.0.1", port),
                ContainerNetwork::Bridge => ("0.0.0.0", BRIDGE_PORT),
            };
            full.retain(|(k, _)| k != "HOST" && k != "PORT");
            full.push(("HOST".into(), host.into()));
            full.push(("PORT".into(), inner_port.to_string()));
            let mut host_config = HostConfig {
                network_mode: Some(network.mode().into()),
                ..Default::default()
            };
            let mut exposed = None;
            if network == ContainerNetwork::Bridge {
                let binding = PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                };
                let key = format!("{BRIDGE_PORT}/tcp");
                host_config.port_bindings =
                    Some([(key.clone(), Some(vec![binding]))].into_iter().collect());
                exposed = Some(vec![key]);
            }
            let body = ContainerCreateBody {
                image: Some(image.to_string()),
                env: Some(env_strings(&full)),
                exposed_ports: exposed,
                host_config: Some(host_config),
                ..Default::default()
            };
            let id = engine
                .create(&container_name(&sanitize(&node_id)), body)
                .await?;
            let node = ContainerNode {
                engine: engine.clone(),
                id,
                port,
                env: full,
            };
            match node.start_and_wait().await {
                Ok(()) => return Ok(node),
                Err(e) if fixed_port.is_none() && is_port_conflict(&e) => {
                    tracing::debug!(attempt, error = %e, "sockudo container did not start");
                    last_error = Some(e); // `node` is removed on drop
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Usage("no start attempts were made".into())))
    }

    /// The container id.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    /// The environment the container was created with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The address the host reaches the node at (`127.0.0.1:P`).
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `http://127.0.0.1:P`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The Pusher WebSocket URL for app `key` on this node.
    pub fn ws_url(&self, key: &str) -> String {
        crate::ws_url(self.addr(), key)
    }

    /// Whether the container runs.
    pub async fn is_running(&self) -> bool {
        matches!(self.engine.state(&self.id).await, Ok((true, _)))
    }

    /// Crash the node: `docker kill` (SIGKILL). Blocks until the engine reports it stopped.
    /// Idempotent.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        self.engine.kill_blocking(&self.id)
    }

    /// SIGTERM (the drain sequence) and wait for the container to stop; returns its exit code.
    pub async fn terminate(&mut self) -> Result<i64, TestkitError> {
        self.engine.signal(&self.id, "SIGTERM").await?;
        let grace = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "SHUTDOWN_GRACE_PERIOD")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let limit = Duration::from_secs(grace) + TERMINATE_SLACK;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (running, exit_code) = self.engine.state(&self.id).await?;
            if !running {
                return Ok(exit_code.unwrap_or(-1));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.kill();
                return Err(TestkitError::timeout(
                    format!(
                        "sockudo container {} to exit after SIGTERM (it was killed)",
                        short(&self.id)
                    ),
                    limit,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kill the node if it runs, then start the same container again (same environment and
    /// port, fresh state) and wait for `GET /health`.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill()?;
        self.start_and_wait().await
    }

    /// The last `lines` lines of the container's log.
    pub async fn log_tail(&self, lines: usize) -> String {
        self.engine.log_tail(&self.id, lines).await
    }

    async fn start_and_wait(&self) -> Result<(), TestkitError> {
        self.engine.start(&self.id).await?;
        let health = format!("{}/health", self.http_url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut polls = 0u32;
        loop {
            if let Ok(response) = http.get(&health).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            polls += 1;
            if polls % 8 == 0 || tokio::time::Instant::now() >= deadline {
                let (running, exit_code) = self.engine.state(&self.id).await?;
                if !running {
                    let tail = self.log_tail(LOG_LINES).await;
                    return Err(TestkitError::Docker(format!(
                        "sockudo container {} (port {}) exited with {exit_code:?}; last log lines:\n{tail}",
                        short(&self.id),
                        self.port
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = self.log_tail(LOG_LINES).await;
                let _ = self.engine.kill_blocking(&self.id);
                return Err(TestkitError::timeout(
                    format!("sockudo container {} to answer GET /health on port {}; last log lines:\n{tail}", short(&self.id), self.port),
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ContainerNode {
    fn drop(&mut self) {
        if let Err(e) = self.engine.remove_blocking(&self.id) {
            tracing::warn!(container = short(&self.id), error = %e, "could not remove the sockudo container");
        }
    }
}

/// The node exited because its port was taken (host networking) or could not be published.
fn is_port_conflict(e: &TestkitError) -> bool {
    let text = e.to_string();
    text.contains("cannot listen")
        || text.contains("address already in use")
        || text.contains("Address already in use")
        || text.contains("port is already allocated")
}

/// Container names allow `[a-zA-Z0-9_.-]`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
