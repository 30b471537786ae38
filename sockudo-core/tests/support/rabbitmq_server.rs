//! A private RabbitMQ node for the core's RabbitMQ-backed tests: its own node name, AMQP,
//! distribution and epmd ports (all free loopback ports), data and log directories, so it
//! never meets the system's broker or another test's.
//!
//! The node runs under a small `sh` watchdog in its own process group that reads its stdin
//! from this process: when the value is dropped, [`RabbitServer::stop`] is called, *or this
//! test process ends in any way* (the pipe closes), the watchdog kills the node's private
//! `epmd` and its whole process group. So no broker process outlives the test binary, even a
//! shared one held in a `static`.
//!
//! Starting a node takes 6–10 s (Erlang boot); it is ready when its AMQP listener answers the
//! protocol header with `Connection.Start`. A missing `rabbitmq-server` or a node that does not
//! come up fails the test (with the node's log tail), it never skips.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian installs the server script (the `/usr/sbin` wrapper switches user).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const START_TIMEOUT: Duration = Duration::from_secs(60);

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

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free loopback port: {e}"),
    }
}

/// One private RabbitMQ node; stopped when dropped.
#[derive(Debug)]
pub struct RabbitServer {
    pub port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitServer {
    /// Start a node on free ports and wait until it serves AMQP.
    pub fn start() -> Self {
        let tag = format!("{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(format!("sockudo-rabbitmq-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RabbitServer {
            port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            node: format!("sockudo-test-{tag}@localhost"),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// One node shared by every test of this process that does not stop it (a node takes
    /// seconds to boot). Tests on it isolate themselves by exchange name.
    pub fn shared() -> &'static RabbitServer {
        static SHARED: OnceLock<RabbitServer> = OnceLock::new();
        SHARED.get_or_init(RabbitServer::start)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kill the node (SIGKILL, as a crash) and wait until it is gone; the ports are kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // "stop" (keep the directory: the node may start again), then EOF: the watchdog
            // kills epmd and its process group.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run `rabbitmqctl` against this node (same cookie and epmd); panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Start the node again on the same ports after [`RabbitServer::stop`].
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} not found: install RabbitMQ (`apt-get install rabbitmq-server`)"
        );
        let d = &self.dir;
        let conf = d.join("rabbitmq.conf");
        std::fs::write(
            &conf,
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
        )
        .unwrap();
        std::fs::write(d.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        let _ = std::fs::remove_file(d.join("exited"));
        let child = Command::new("sh")
            .args(["-c", WATCHDOG])
            .env("RABBIT_SERVER", SERVER)
            .env("RABBIT_DIR", d)
            .env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", &conf)
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
            .unwrap_or_else(|e| panic!("cannot start sh for rabbitmq-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !serves_amqp(self.port) {
            if self.dir.join("exited").exists() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                self.stop();
                panic!(
                    "rabbitmq node {} on port {} did not start; log tail:\n{}",
                    self.node,
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether an AMQP broker on `port` answers the protocol header with a method frame
/// (`Connection.Start`).
pub fn serves_amqp(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    s.read_exact(&mut first).is_ok() && first[0] == 1
}
