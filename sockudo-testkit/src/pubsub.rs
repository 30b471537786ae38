//! [`PubSubEmulator`]: the official Google Pub/Sub emulator (Java; Debian package
//! `google-cloud-cli-pubsub-emulator`) as a child process on a random loopback port, killed
//! when dropped.
//!
//! It keeps its port for the life of the value, so [`PubSubEmulator::kill`] followed by
//! [`PubSubEmulator::start_again`] looks, to a client, like the emulator coming back — with
//! none of its state: topics, subscriptions and messages live in memory only (the adapter
//! recreates what it needs by itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{free_port, kill_and_reap, log_tail, loopback, scratch_dir};
use crate::TestkitError;

/// Where the Debian package puts the launcher (it `exec`s the JVM: the child is the
/// emulator itself). `PUBSUB_EMULATOR_BIN` overrides it.
pub const DEFAULT_LAUNCHER: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A JVM needs a few seconds on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One Pub/Sub emulator; see the module docs.
#[derive(Debug)]
pub struct PubSubEmulator {
    port: u16,
    launcher: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

impl PubSubEmulator {
    /// Start on a free port and wait until it answers.
    pub async fn start() -> Result<PubSubEmulator, TestkitError> {
        let launcher = std::env::var_os("PUBSUB_EMULATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LAUNCHER));
        if !launcher.is_file() {
            return Err(TestkitError::ProgramNotFound {
                program: "cloud-pubsub-emulator",
                hint: "install the Debian package google-cloud-cli-pubsub-emulator (and a Java \
                       runtime), or set PUBSUB_EMULATOR_BIN to its bin/cloud-pubsub-emulator",
            });
        }
        let mut emulator = PubSubEmulator {
            port: free_port()?,
            launcher,
            child: None,
            dir: scratch_dir("pubsub")?,
        };
        emulator.spawn()?;
        emulator.wait_ready().await?;
        Ok(emulator)
    }

    /// `127.0.0.1:P`, the `PUBSUB_EMULATOR_HOST` of the nodes.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// The emulator's address.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Whether the emulator process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill the emulator (SIGKILL) and reap it: every topic and subscription is gone.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Start a killed emulator again on its port (empty) and wait until it answers.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("pubsub-emulator.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = self.log_path();
        let log_file = std::fs::File::create(&log)
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let child = Command::new(&self.launcher)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            // A small heap and a quick JIT: the emulator carries test traffic only.
            .env(
                "CLOUD_PUBSUB_EMULATOR_OPTS",
                "-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io("spawn the Pub/Sub emulator", e))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll the Pub/Sub emulator", e))?
                {
                    self.child = None;
                    return Err(TestkitError::ProcessExited {
                        what: "the Pub/Sub emulator".into(),
                        status,
                        log_tail: log_tail(&self.log_path(), 10),
                    });
                }
            }
            if answers(self.addr()).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    "the Pub/Sub emulator to answer GET /",
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the emulator at `addr` answers `GET /` with 200.
async fn answers(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        head.starts_with(b"HTTP/1.1 200").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(()))
    )
}
