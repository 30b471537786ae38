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
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::util::{free_port, kill_and_reap, log_tail, loopback, scratch_dir};
use crate::TestkitError;

/// How long a fresh broker gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

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
    child: Option<Child>,
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
        let mut broker = PulsarBroker {
            port: free_port()?,
            metrics_port: free_port()?,
            binary,
            dir: scratch_dir("pulsar")?,
            child: None,
        };
        broker.spawn()?;
        broker.wait_ready().await?;
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

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill the broker (SIGKILL) and reap it; its storage stays.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Start a killed broker again on its ports and storage, and wait until it is ready.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("pulsar-lite.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let conf = self.dir.join("pulsar-lite.toml");
        std::fs::write(
            &conf,
            format!("[metrics]\naddr = \"127.0.0.1:{}\"\n", self.metrics_port),
        )
        .map_err(|e| TestkitError::io(format!("write {}", conf.display()), e))?;
        let log = self.log_path();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&conf)
            .arg("--addr")
            .arg(self.addr().to_string())
            .arg("--db-path")
            .arg(self.dir.join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawn {}", self.binary.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll pulsar-lite", e))?
                {
                    self.child = None;
                    return Err(TestkitError::ProcessExited {
                        what: "pulsar-lite".into(),
                        status,
                        log_tail: log_tail(&self.log_path(), 10),
                    });
                }
            }
            if TcpStream::connect(self.addr()).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    "pulsar-lite to accept connections",
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PulsarBroker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
