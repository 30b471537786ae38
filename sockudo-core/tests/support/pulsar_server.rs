//! A `pulsar-lite` child process on loopback ports for the core's Pulsar-backed tests.
//!
//! pulsar-lite is an independent implementation of the Pulsar binary protocol (not Apache
//! Pulsar, which cannot be had here), shipped as a binary inside the PyPI wheel
//! `pulsar-lite==0.2.0`. The binary is found through `SOCKUDO_PULSAR_LITE`, else at
//! `$HOME/.cache/sockudo-brokers/pulsar-lite-0.2.0/pulsar-lite` (where `.ci/run` puts it).
//! A missing binary or a broker that does not start FAILS the test (never a skip). Started on
//! free ports with its own storage directory, ready once its port accepts connections,
//! killed (and the directory removed) on drop; `stop` + `start_again` keep port and storage.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port.
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free loopback port: {e}"),
    }
}

/// Where the binary is looked for (see the module docs).
pub fn pulsar_lite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKUDO_PULSAR_LITE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sockudo-brokers/pulsar-lite-0.2.0/pulsar-lite")
}

/// A `pulsar-lite` broker; killed (and its storage removed) when dropped.
#[derive(Debug)]
pub struct PulsarServer {
    pub port: u16,
    metrics_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PulsarServer {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sockudo-pulsar-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("pulsar-lite temp dir");
        let mut server = PulsarServer {
            port: free_port(),
            metrics_port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = pulsar_lite_binary();
        assert!(
            bin.is_file(),
            "pulsar-lite binary not found at {} (set SOCKUDO_PULSAR_LITE, or run .ci/run, which \
             downloads the PyPI wheel pulsar-lite==0.2.0 into ~/.cache/sockudo-brokers)",
            bin.display()
        );
        let config = self.dir.join("pulsar-lite.toml");
        std::fs::write(
            &config,
            format!("[metrics]\naddr = \"127.0.0.1:{}\"\n", self.metrics_port),
        )
        .expect("pulsar-lite config");
        let log = std::fs::File::create(self.dir.join("broker.log")).expect("pulsar-lite log");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db-path")
            .arg(self.dir.join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                panic!("pulsar-lite exited at start ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-lite on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.port)
    }

    /// Kill the broker and wait until it has exited (storage is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports and storage after [`PulsarServer::stop`].
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PulsarServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
