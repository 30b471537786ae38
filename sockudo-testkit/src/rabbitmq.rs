//! [`RabbitMq`]: a private, throwaway RabbitMQ node on random loopback ports.
//!
//! The node gets its own node name, AMQP port, distribution port and `epmd` port, data and log
//! directories (RabbitMQ 3.10 as Debian ships it: `/usr/lib/rabbitmq/bin/rabbitmq-server`,
//! called directly because the `/usr/sbin` wrapper switches user), so it never meets the
//! system's broker or another test's. It runs under a small `sh` watchdog in its own process
//! group whose stdin is a pipe from this process: [`RabbitMq::kill`], dropping the value, or
//! the end of this process in any way closes the pipe, and the watchdog then stops the node's
//! private `epmd` and kills its whole process group. No broker process outlives the test.
//!
//! A node boots in 6–10 s; it is ready when its AMQP listener answers the protocol header
//! with `Connection.Start`. [`RabbitMq::kill`] followed by [`RabbitMq::start_again`] keeps
//! the ports, so to a client it looks like the broker restarting.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{free_port, log_tail, loopback, scratch_dir};
use crate::TestkitError;

/// Where Debian installs the server script.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Erlang boots slowly, more so on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the node in the background, waits for its stdin to close, then cleans up.
const WATCHDOG: &str = r#"
{ "$RABBIT_SERVER"; echo "$?" > "$RABBIT_DIR/exited"; } >>"$RABBIT_DIR/broker.log" 2>&1 &
read -r line || true
epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1
# End of input without "stop": the owning process is gone, nobody will remove the directory.
if [ "$line" != stop ]; then
  setsid sh -c 'sleep 1; rm -rf "$0"' "$RABBIT_DIR" >/dev/null 2>&1 &
  sleep 0.2 # until it has left this process group
fi
kill -9 0
"#;

/// One private RabbitMQ node; killed when dropped.
#[derive(Debug)]
pub struct RabbitMq {
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// Start a node on free ports and wait until it serves AMQP.
    pub async fn start() -> Result<RabbitMq, TestkitError> {
        if !Path::new(SERVER).exists() {
            return Err(TestkitError::ProgramNotFound {
                program: "rabbitmq-server",
                hint: "install RabbitMQ (`apt-get install rabbitmq-server`; the testkit runs \
                       /usr/lib/rabbitmq/bin/rabbitmq-server)",
            });
        }
        let dir = scratch_dir("rabbitmq")?;
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut mq = RabbitMq {
            port: free_port()?,
            dist_port: free_port()?,
            epmd_port: free_port()?,
            node: format!("sockudo-test-{tag}@localhost"),
            dir,
            child: None,
        };
        mq.spawn()?;
        mq.wait_ready().await?;
        Ok(mq)
    }

    /// `amqp://guest:guest@127.0.0.1:P/%2f` (the `RABBITMQ_URL` of a node).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The process id of the node's watchdog while it runs; the node (`beam.smp` and its
    /// helpers) runs among its descendants, so sample the whole process tree.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the node's watchdog (and so the node) is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill the node (as a crash: SIGKILL) and wait until its AMQP port is closed.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.stop_now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr()).await.is_ok() {
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::timeout(
                    "the killed RabbitMQ node to close its port",
                    Duration::from_secs(10),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Start a killed node again on its ports and wait until it serves AMQP.
    pub async fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()?;
        self.wait_ready().await
    }

    fn stop_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            // "stop" (keep the directory: the node may start again), then EOF: the watchdog
            // kills epmd and its process group.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Belt and braces: the whole group, by id.
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let d = self.dir.clone();
        let write = |name: &str, text: String| {
            let path = d.join(name);
            std::fs::write(&path, text)
                .map_err(|e| TestkitError::io(format!("write {}", path.display()), e))
        };
        write(
            "rabbitmq.conf",
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\n\
                 distribution.listener.interface = 127.0.0.1\n\
                 distribution.listener.port_range.min = {dist}\n\
                 distribution.listener.port_range.max = {dist}\n\
                 loopback_users = none\n\
                 disk_free_limit.absolute = 1MB\n\
                 vm_memory_high_watermark.relative = 0.9\n",
                self.port,
                dist = self.dist_port
            ),
        )?;
        write("rabbitmq-env.conf", String::new())?;
        write("enabled_plugins", "[].\n".into())?;
        let _ = std::fs::remove_file(d.join("exited"));
        let child = Command::new("sh")
            .args(["-c", WATCHDOG])
            .env("RABBIT_SERVER", SERVER)
            .env("RABBIT_DIR", &d)
            .env("HOME", &d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            // Lets `epmd -kill` stop it even while the node is still registered.
            .env("ERL_EPMD_RELAXED_COMMAND_CHECK", "1")
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestkitError::io("spawn sh for rabbitmq-server", e))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if serves_amqp(self.addr()).await {
                return Ok(());
            }
            let exited = self.dir.join("exited");
            if exited.exists() || tokio::time::Instant::now() >= deadline {
                let tail = log_tail(&self.dir.join("broker.log"), 15);
                self.stop_now();
                let state = if exited.exists() {
                    "it exited"
                } else {
                    "still booting"
                };
                return Err(TestkitError::timeout(
                    format!(
                        "rabbitmq node {} to serve AMQP on port {} ({state}); log tail:\n{tail}",
                        self.node, self.port
                    ),
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the broker at `addr` answers the AMQP protocol header with a method frame.
async fn serves_amqp(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        (first[0] == 1).then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(1000), attempt).await,
        Ok(Some(()))
    )
}
