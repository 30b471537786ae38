//! [`RedisServer`]: a throwaway `redis-server` child process on a random loopback port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{free_port, loopback, on_path, scratch_dir, ServerChild};
use crate::TestkitError;

/// How long a fresh `redis-server` gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often PING is tried while it starts.
const POLL: Duration = Duration::from_millis(15);
/// How many ports to try when the picked one is taken before Redis binds it.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` process without persistence, killed when dropped.
///
/// The port stays the same for the life of the value, so [`RedisServer::restart`] looks, to a
/// client, like the same Redis coming back empty.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    proc: ServerChild,
    dir: PathBuf,
}

impl RedisServer {
    /// Start `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` on a free port
    /// and wait until it answers PING.
    pub async fn start() -> Result<RedisServer, TestkitError> {
        if !on_path("redis-server") {
            return Err(TestkitError::ProgramNotFound {
                program: "redis-server",
                hint: "install it (`apt-get install redis-server`)",
            });
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            // A directory per attempt: a failed attempt's value removes its own on drop.
            let dir = scratch_dir("redis")?;
            let mut server = RedisServer {
                port,
                proc: ServerChild::new(
                    format!("redis-server on port {port}"),
                    dir.join(format!("redis-{port}.log")),
                ),
                dir,
            };
            match server.start_again().await {
                Ok(()) => return Ok(server),
                // The port was taken between picking and binding: Redis exits at once. Try another.
                Err(e @ TestkitError::ProcessExited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Usage("no port attempts were made".into())))
    }

    /// `redis://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port, fixed for the life of this value.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:P`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill the process (SIGKILL, like a crash) and reap it. Its data is gone. Idempotent.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.proc.kill()
    }

    /// Start a stopped server again on the same port and wait for PING. A no-op when running.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir);
        let addr = self.addr();
        self.proc
            .start(&mut cmd, START_TIMEOUT, POLL, "answer PING", || ping(addr))
            .await?;
        tracing::debug!(port = self.port, "redis-server ready");
        Ok(())
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again) on the same port.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again().await
    }

    /// Send PING; true when the answer is `+PONG`.
    pub async fn ping(&self) -> bool {
        ping(self.addr()).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One PING over raw RESP. Any failure (refused, reset, `-LOADING`, timeout) is `false`.
pub async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let mut filled = 0;
        while !buf[..filled].ends_with(b"\r\n") && filled < buf.len() {
            let n = stream.read(&mut buf[filled..]).await.ok()?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Some(buf[..filled].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}
