//! The official Google Pub/Sub emulator (Java, Debian package
//! `google-cloud-cli-pubsub-emulator`) as a child process on a loopback port for the core's
//! Pub/Sub tests: started on a free (or given) port, ready once `GET /` answers, killed on
//! drop. Its launcher `exec`s the JVM, so the child is the emulator itself. A missing emulator
//! fails the test (never a skip); `PUBSUB_EMULATOR_BIN` overrides the launcher's path.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package puts the launcher.
pub const DEFAULT_LAUNCHER: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A running emulator; killed when dropped. Its state (topics, subscriptions, messages) lives
/// in memory only: a restart loses all of it.
#[derive(Debug)]
pub struct PubSubEmulator {
    pub port: u16,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free loopback port: {e}"),
    }
}

impl PubSubEmulator {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on `port` and wait until it answers HTTP.
    pub fn start_on(port: u16) -> Self {
        let launcher =
            std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| DEFAULT_LAUNCHER.to_owned());
        let child = Command::new(&launcher)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            // A small heap and a quick JIT: the emulator carries test traffic only.
            .env(
                "CLOUD_PUBSUB_EMULATOR_OPTS",
                "-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Pub/Sub emulator {launcher:?}: {e} (Debian package \
                     google-cloud-cli-pubsub-emulator, with a Java runtime; or set \
                     PUBSUB_EMULATOR_BIN)"
                )
            });
        let mut emulator = PubSubEmulator {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(port) {
            if let Some(Ok(Some(status))) = emulator.child.as_mut().map(|c| c.try_wait()) {
                panic!("the Pub/Sub emulator on port {port} exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the Pub/Sub emulator on port {port} did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        emulator
    }

    /// `host:port`, as `PUBSUB_EMULATOR_HOST` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the emulator and wait until it has exited (all its state is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port after [`PubSubEmulator::stop`], empty.
    pub fn start_again(&mut self) {
        *self = Self::start_on(self.port);
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an emulator on `port` answers `GET /` with `200`.
pub fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}
