//! [`PulsarBroker`]: a throwaway `pulsar-lite` child process on random loopback ports, killed
//! (and its storage removed) when dropped.
//!
//! pulsar-lite is an independent implementation of the Pulsar binary protocol, **not Apache
//! Pulsar** (none can be had on this machine), shipped as a binary inside the PyPI wheel
//! `pulsar-lite==0.2.0`. The binary is taken from `SOCKUDO_PULSAR_LITE`, else from
//! `$HOME/.cache/sockudo-brokers/pulsar-lite-0.2.0/pulsar-lite` (where `.ci/run` unpacks it).
//! [`PulsarBroker::kill`] followed by [`PulsarBroker::start_again`] keeps ports and storage,
//! so to a client it looks like the broker restarting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::{accepts, free_port, loopback, scratch_dir, ServerChild};
use crate::TestkitError;

/// How long a fresh broker gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is probed while it starts.
const POLL: Duration = Duration::from_millis(20);

/// Where the `pulsar-lite` binary is looked for (see the module docs).
pub fn pulsar_lite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKUDO_PULSAR_LITE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sockudo-brokers/pulsar-lite-0.2.0/pulsar-lite")
}

/// One `pulsar-lite` broker.
#[derive(Debug)]
pub struct PulsarBroker {
    port: u16,
    metrics_port: u16,
    binary: PathBuf,
    dir: PathBuf,
    proc: ServerChild,
}

impl PulsarBroker {
    /// Start a broker on free ports and wait until it accepts connections. Fails with
    /// [`TestkitError::ProgramNotFound`] when the binary is missing.
    pub async fn start() -> Result<PulsarBroker, TestkitError> {
        let binary = pulsar_lite_binary();
        if !binary.is_file() {
            return Err(TestkitError::ProgramNotFound {
                program: "pulsar-lite",
                hint: "set SOCKUDO_PULSAR_LITE, or run .ci/run (it downloads the PyPI wheel \
                       pulsar-lite==0.2.0 and unpacks the binary into \
                       ~/.cache/sockudo-brokers/pulsar-lite-0.2.0/)",
            });
        }
        let dir = scratch_dir("pulsar")?;
        let mut broker = PulsarBroker {
            port: free_port()?,
            metrics_port: free_port()?,
            binary,
            proc: ServerChild::new("pulsar-lite", dir.join("pulsar-lite.log")),
            dir,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `pulsar://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("pulsar://{}", self.addr())
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill the broker (SIGKILL) and reap it; its storage stays.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        self.proc.kill()
    }

    /// Start a killed broker again on its ports and storage, and wait until it is ready.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), TestkitError> {
        let conf = self.dir.join("pulsar-lite.toml");
        std::fs::write(
            &conf,
            format!("[metrics]\naddr = \"127.0.0.1:{}\"\n", self.metrics_port),
        )
        .map_err(|e| TestkitError::io(format!("write {}", conf.display()), e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&conf)
            .arg("--addr")
            .arg(self.addr().to_string())
            .arg("--db-path")
            .arg(self.dir.join("db"));
        let addr = self.addr();
        self.proc
            .start(&mut cmd, START_TIMEOUT, POLL, "accept connections", || {
                accepts(addr)
            })
            .await
    }
}

impl Drop for PulsarBroker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
