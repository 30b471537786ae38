//! [`RedisContainer`]: a throwaway Redis (no persistence) in a container.

use std::net::SocketAddr;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};

use super::engine::{short, DockerEngine};
use super::{container_name, ContainerNetwork};
use crate::redis::ping;
use crate::util::{free_port, loopback};
use crate::TestkitError;

/// How long a started container gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports tried when the picked one is taken before Redis binds it.
const PORT_ATTEMPTS: usize = 4;
/// Redis's port inside its own network namespace (bridge mode).
const BRIDGE_PORT: u16 = 6379;

/// A Redis container, force-removed when dropped. Like [`RedisServer`](crate::RedisServer),
/// its host port stays the same for the life of the value, so a stop/start looks to clients
/// like the same Redis coming back empty.
#[derive(Debug)]
pub struct RedisContainer {
    engine: DockerEngine,
    id: String,
    port: u16,
    network: ContainerNetwork,
}

impl RedisContainer {
    /// Start `image` (`redis-server` on its PATH) and wait until it answers PING on
    /// `127.0.0.1:`[`port`](Self::port).
    pub async fn start(
        engine: &DockerEngine,
        image: &str,
        network: ContainerNetwork,
    ) -> Result<RedisContainer, TestkitError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let (cmd_port, bind) = match network {
                ContainerNetwork::Host => (port, "127.0.0.1"),
                ContainerNetwork::Bridge => (BRIDGE_PORT, "0.0.0.0"),
            };
            let cmd = [
                "redis-server",
                "--port",
                &cmd_port.to_string(),
                "--bind",
                bind,
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ];
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
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                exposed_ports: exposed,
                host_config: Some(host_config),
                ..Default::default()
            };
            let id = engine.create(&container_name("redis"), body).await?;
            let mut redis = RedisContainer {
                engine: engine.clone(),
                id,
                port,
                network,
            };
            match redis.start_again().await {
                Ok(()) => return Ok(redis),
                // Most likely the port was taken meanwhile; `redis` is removed on drop.
                Err(e) => {
                    tracing::debug!(port, error = %e, "redis container did not start");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Usage("no port attempts were made".into())))
    }

    /// The container id.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    /// The port on the host's loopback (fixed for the life of this value).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:P`, as the host reaches it.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:P`, as the host reaches it.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The address other containers reach Redis at: the same loopback address with host
    /// networking, the container's bridge address and port 6379 in bridge mode.
    pub async fn container_addr(&self) -> Result<String, TestkitError> {
        match self.network {
            ContainerNetwork::Host => Ok(self.addr().to_string()),
            ContainerNetwork::Bridge => {
                let ip = self.engine.bridge_ip(&self.id).await?.ok_or_else(|| {
                    TestkitError::Docker(format!(
                        "redis container {} has no bridge address",
                        short(&self.id)
                    ))
                })?;
                Ok(format!("{ip}:{BRIDGE_PORT}"))
            }
        }
    }

    /// Kill the container (SIGKILL; its data is gone). Blocks until the engine reports it
    /// stopped. Idempotent.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.engine.kill_blocking(&self.id)
    }

    /// Start the stopped container again (same port, empty) and wait for PING. A no-op
    /// when it runs and answers already.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.engine.state(&self.id).await?.0 && self.ping().await {
            return Ok(());
        }
        self.engine.start(&self.id).await?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut polls = 0u32;
        loop {
            if ping(self.addr()).await {
                return Ok(());
            }
            polls += 1;
            if polls % 10 == 0 {
                let (running, exit_code) = self.engine.state(&self.id).await?;
                if !running {
                    let tail = self.engine.log_tail(&self.id, 10).await;
                    return Err(TestkitError::Docker(format!(
                        "redis container {} exited ({exit_code:?}); last log lines:\n{tail}",
                        short(&self.id)
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.stop();
                return Err(TestkitError::timeout(
                    format!(
                        "redis container {} to answer PING on port {}",
                        short(&self.id),
                        self.port
                    ),
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again().await
    }

    /// Send PING from the host; true when the answer is `+PONG`.
    pub async fn ping(&self) -> bool {
        ping(self.addr()).await
    }

    /// The last `lines` lines of the container's log.
    pub async fn log_tail(&self, lines: usize) -> String {
        self.engine.log_tail(&self.id, lines).await
    }
}

impl Drop for RedisContainer {
    fn drop(&mut self) {
        if let Err(e) = self.engine.remove_blocking(&self.id) {
            tracing::warn!(container = short(&self.id), error = %e, "could not remove the redis container");
        }
    }
}
