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
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{free_port, loopback, scratch_dir, ServerChild};
use crate::TestkitError;

/// Where the Debian package puts the launcher (it `exec`s the JVM: the child is the
/// emulator itself). `PUBSUB_EMULATOR_BIN` overrides it.
pub const DEFAULT_LAUNCHER: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A JVM needs a few seconds on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is probed while it starts.
const POLL: Duration = Duration::from_millis(50);

/// One Pub/Sub emulator; see the module docs.
#[derive(Debug)]
pub struct PubSubEmulator {
    port: u16,
    launcher: PathBuf,
    proc: ServerChild,
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
        let dir = scratch_dir("pubsub")?;
        let mut emulator = PubSubEmulator {
            port: free_port()?,
            launcher,
            proc: ServerChild::new("the Pub/Sub emulator", dir.join("pubsub-emulator.log")),
            dir,
        };
        emulator.spawn().await?;
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

    /// The emulator's process id (the JVM: the launcher `exec`s it) while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the emulator process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill the emulator (SIGKILL) and reap it: every topic and subscription is gone.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        self.proc.kill()
    }

    /// Start a killed emulator again on its port (empty) and wait until it answers.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), TestkitError> {
        let mut cmd = Command::new(&self.launcher);
        cmd.arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            // A small heap and a quick JIT: the emulator carries test traffic only.
            .env(
                "CLOUD_PUBSUB_EMULATOR_OPTS",
                "-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
            );
        let addr = self.addr();
        self.proc
            .start(&mut cmd, START_TIMEOUT, POLL, "answer GET /", || {
                answers(addr)
            })
            .await
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
