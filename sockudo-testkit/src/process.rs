//! [`ProcessNode`]: the real `sockudo` binary as a child process, configured only through the
//! environment names of docs/configuration.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use sockudo_server::config::NodeSettings;

use crate::util::{free_port, kill_and_reap, log_tail, loopback, scratch_dir, wait_exit};
use crate::TestkitError;

/// How long a fresh process gets until `GET /health` answers 200.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Time for a terminated process beyond its `SHUTDOWN_GRACE_PERIOD`.
const TERMINATE_SLACK: Duration = Duration::from_secs(15);
/// Ports tried when the picked one is taken before the node binds it.
const PORT_ATTEMPTS: usize = 5;
/// Log lines quoted in errors.
const LOG_LINES: usize = 20;

use sockudo_server::config::ENV_VARS as CONFIG_VARS;

/// Defaults for tests, applied before the caller's variables: loopback, no metrics listener,
/// no drain grace.
const TEST_DEFAULTS: &[(&str, &str)] = &[
    ("HOST", "127.0.0.1"),
    ("METRICS_PORT", "0"),
    ("SHUTDOWN_GRACE_PERIOD", "0"),
];

/// A `sockudo` child process. Killed (SIGKILL) when dropped.
///
/// Its stdout and stderr go to a log file ([`ProcessNode::log_path`]) whose tail is quoted in
/// start-up errors.
#[derive(Debug)]
pub struct ProcessNode {
    bin: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl ProcessNode {
    /// Start the binary found by [`sockudo_binary`] (built with [`ensure_sockudo_binary`]
    /// when there is none yet) with `env` on top of the test defaults (`HOST=127.0.0.1`,
    /// `METRICS_PORT=0`, `SHUTDOWN_GRACE_PERIOD=0`) and a free `PORT` (unless `env` sets one),
    /// then wait for `GET /health` = 200.
    pub async fn start(env: Vec<(String, String)>) -> Result<ProcessNode, TestkitError> {
        let bin = match sockudo_binary() {
            Ok(bin) => bin,
            Err(TestkitError::BinaryNotFound { .. })
                if std::env::var_os("SOCKUDO_BIN").is_none() =>
            {
                tokio::task::spawn_blocking(ensure_sockudo_binary)
                    .await
                    .map_err(|e| {
                        TestkitError::io("build the sockudo binary", std::io::Error::other(e))
                    })??
            }
            Err(e) => return Err(e),
        };
        let fixed_port = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PORT")
            .map(|(_, v)| v.clone());
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut last_error = None;
        for attempt in 0..attempts {
            let port = match &fixed_port {
                Some(p) => p
                    .trim()
                    .parse()
                    .map_err(|_| TestkitError::Usage(format!("PORT={p:?} is not a port number")))?,
                None => free_port()?,
            };
            let dir = scratch_dir("node")?;
            let log = dir.join(format!("sockudo-{port}.log"));
            let mut node = ProcessNode {
                bin: bin.clone(),
                env: env.clone(),
                port,
                child: None,
                dir,
                log,
            };
            match node.spawn_and_wait().await {
                Ok(()) => return Ok(node),
                // The port was taken between picking and binding: try another.
                Err(e) if matches!(&e, TestkitError::ProcessExited { log_tail, .. } if log_tail.contains("cannot listen")) =>
                {
                    tracing::debug!(attempt, error = %e, "sockudo did not start");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Usage("no start attempts were made".into())))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The port, kept across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The Pusher WebSocket URL for app `key`.
    pub fn ws_url(&self, key: &str) -> String {
        crate::ws_url(self.addr(), key)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the process's stdout and stderr go.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL and reap: a crash. Idempotent.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for the process to drain and exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus, TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Err(TestkitError::Usage(
                "terminate: the process is not running".into(),
            ));
        };
        if let Some(status) = child
            .try_wait()
            .map_err(|e| TestkitError::io("poll sockudo", e))?
        {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| TestkitError::io("run `kill -TERM`", e))?;
        if !sent.success() {
            let _ = kill_and_reap(&mut child);
            return Err(TestkitError::Usage(format!(
                "`kill -TERM {}` failed with {sent}",
                child.id()
            )));
        }
        let limit = Duration::from_secs(self.grace_period()) + TERMINATE_SLACK;
        match wait_exit(&mut child, limit).await? {
            Some(status) => Ok(status),
            None => {
                let _ = kill_and_reap(&mut child);
                Err(TestkitError::timeout(
                    "sockudo to exit after SIGTERM (it was killed)",
                    limit,
                ))
            }
        }
    }

    /// The value of environment variable `name` the process is (re)started with, if set.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set environment variable `name` for the next [`restart`](Self::restart) (the running
    /// process is not touched). Replaces an earlier value.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Kill the process if it runs, then start it again with the same environment and port.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill()?;
        self.spawn_and_wait().await
    }

    fn grace_period(&self) -> u64 {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "SHUTDOWN_GRACE_PERIOD")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| TestkitError::io(format!("open {}", self.log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let mut command = Command::new(&self.bin);
        for name in CONFIG_VARS {
            command.env_remove(name);
        }
        command.envs(TEST_DEFAULTS.iter().copied());
        command.env("PORT", self.port.to_string());
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawn {}", self.bin.display()), e))?;
        self.child = Some(child);
        let health = format!("{}/health", self.http_url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io("poll sockudo", e))?
                {
                    self.child = None;
                    return Err(TestkitError::ProcessExited {
                        what: format!("sockudo on port {}", self.port),
                        status,
                        log_tail: self.log_tail(LOG_LINES),
                    });
                }
            }
            if let Ok(response) = http.get(&health).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill()?;
                return Err(TestkitError::timeout(
                    format!(
                        "sockudo on port {} to answer GET /health (log: {})",
                        self.port,
                        self.log.display()
                    ),
                    START_TIMEOUT,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The environment (docs/configuration.md names) that configures the binary like `settings`, as far as
/// the environment can: listener, node id, drivers, URLs, timings, and the first app as the
/// dev app. Further apps and per-app limits need a TOML file and are not carried over.
pub fn settings_env(settings: &NodeSettings) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("SOCKUDO_NODE_ID", settings.node_id.clone()),
        ("ADAPTER_DRIVER", settings.adapter.driver.clone()),
        ("CACHE_DRIVER", settings.cache.driver.clone()),
        ("QUEUE_DRIVER", settings.queue.driver.clone()),
        ("HISTORY_DRIVER", settings.history.driver.clone()),
        (
            "CLUSTER_HEARTBEAT_INTERVAL_MS",
            settings.cluster.heartbeat_interval_ms.to_string(),
        ),
        (
            "CLUSTER_NODE_TIMEOUT_MS",
            settings.cluster.node_timeout_ms.to_string(),
        ),
        (
            "CLUSTER_REQUEST_TIMEOUT_MS",
            settings.cluster.request_timeout_ms.to_string(),
        ),
        ("APP_MANAGER_DRIVER", settings.app_manager.driver.clone()),
        ("REDIS_URL", settings.redis.url.clone()),
        ("NATS_URL", settings.nats.url.clone()),
        ("RABBITMQ_URL", settings.rabbitmq.url.clone()),
        (
            "RABBITMQ_MAX_MESSAGE_BYTES",
            settings.rabbitmq.max_message_bytes.to_string(),
        ),
        ("PULSAR_URL", settings.pulsar.url.clone()),
        (
            "IGGY_CONNECTION_STRING",
            settings.iggy.connection_string.clone(),
        ),
        ("IGGY_STREAM", settings.iggy.stream.clone()),
        ("KAFKA_BROKERS", settings.kafka.brokers.clone()),
        (
            "KAFKA_SECURITY_PROTOCOL",
            settings.kafka.security_protocol.clone(),
        ),
        ("CLUSTER_PREFIX", settings.cluster.prefix.clone()),
        ("METRICS_PORT", settings.metrics_port.to_string()),
        (
            "SHUTDOWN_GRACE_PERIOD",
            settings.shutdown_grace_period.to_string(),
        ),
        ("ACTIVITY_TIMEOUT", settings.activity_timeout.to_string()),
        ("LOG_FORMAT", settings.log_format.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (name, value) in [
        (
            "PRESENCE_DRIVER",
            Some(&settings.presence.driver).filter(|d| !d.is_empty()),
        ),
        ("NATS_USERNAME", settings.nats.username.as_ref()),
        ("NATS_PASSWORD", settings.nats.password.as_ref()),
        ("NATS_TOKEN", settings.nats.token.as_ref()),
        (
            "GOOGLE_PUBSUB_PROJECT_ID",
            Some(&settings.google_pubsub.project_id).filter(|p| !p.is_empty()),
        ),
        (
            "PUBSUB_EMULATOR_HOST",
            settings.google_pubsub.emulator_host.as_ref(),
        ),
        ("PULSAR_TOKEN", settings.pulsar.token.as_ref()),
        (
            "KAFKA_SASL_MECHANISM",
            settings.kafka.sasl_mechanism.as_ref(),
        ),
        ("KAFKA_SASL_USERNAME", settings.kafka.sasl_username.as_ref()),
        ("KAFKA_SASL_PASSWORD", settings.kafka.sasl_password.as_ref()),
    ] {
        if let Some(v) = value {
            env.push((name.into(), v.clone()));
        }
    }
    if !settings.redis.cluster_nodes.is_empty() {
        env.push((
            "REDIS_CLUSTER_NODES".into(),
            settings.redis.cluster_nodes.join(","),
        ));
    }
    if let Some(url) = &settings.database_url {
        env.push(("DATABASE_URL".into(), url.0.clone()));
        let m = &settings.app_manager;
        env.push(("APP_MANAGER_TABLE".into(), m.table.clone()));
        env.push(("APP_MANAGER_CACHE_TTL".into(), m.cache_ttl.to_string()));
        env.push((
            "APP_MANAGER_POLL_INTERVAL".into(),
            m.poll_interval.to_string(),
        ));
    }
    if let (Some(port), Some(token)) = (settings.admin.port, &settings.admin.token) {
        env.push(("ADMIN_PORT".into(), port.to_string()));
        env.push(("ADMIN_TOKEN".into(), token.clone()));
    }
    if let Some(app) = settings.apps.first() {
        env.push(("SOCKUDO_DEFAULT_APP_ID".into(), app.id.clone()));
        env.push(("SOCKUDO_DEFAULT_APP_KEY".into(), app.key.clone()));
        env.push(("SOCKUDO_DEFAULT_APP_SECRET".into(), app.secret.clone()));
        env.push((
            "SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES".into(),
            app.enable_client_messages.to_string(),
        ));
    }
    if settings.apps.len() > 1 {
        tracing::warn!(
            apps = settings.apps.len(),
            "process nodes get only the first app through the environment"
        );
    }
    env
}

/// Where the `sockudo` binary is, first match wins: `$SOCKUDO_BIN`;
/// `$CARGO_TARGET_DIR/debug/sockudo`; next to the running test binary (`target/debug/deps/..`);
/// `target/debug/sockudo` under the workspace root.
pub fn sockudo_binary() -> Result<PathBuf, TestkitError> {
    let candidates = binary_candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(TestkitError::BinaryNotFound {
            searched: candidates,
        })
}

/// Build the `sockudo` binary (`cargo build -p sockudo-server --bin sockudo`, default
/// features, using `$CARGO`, which cargo sets for tests) and return its path. Cargo runs every
/// time, once per test process: when the binary is fresh that is a quick no-op, and it means a
/// binary left over from older sources is never run by mistake. Blocks while cargo runs.
///
/// With `$SOCKUDO_BIN` set, that file is used as is and nothing is built. Otherwise the build
/// goes to the target directory of the running tests (`$CARGO_TARGET_DIR`, else the one the
/// test binary lives in), which is also where [`sockudo_binary`] looks first.
pub fn ensure_sockudo_binary() -> Result<PathBuf, TestkitError> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    if let Some(bin) = std::env::var_os("SOCKUDO_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(TestkitError::BinaryNotFound {
                searched: vec![bin],
            })
        };
    }
    // One build per process, even when tests ask concurrently.
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let target_dir = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Said out loud: a first build takes minutes and the test would look hung meanwhile.
    eprintln!(
        "sockudo-testkit: building the sockudo binary (`cargo build -p sockudo-server --bin sockudo` \
         into {}); a first build takes a few minutes, later ones are a quick no-op. Set SOCKUDO_BIN \
         to use a binary you built.",
        target_dir.display()
    );
    let output = Command::new(cargo)
        .args([
            "build",
            "-p",
            "sockudo-server",
            "--bin",
            "sockudo",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestkitError::io("run cargo build for the sockudo binary", e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(LOG_LINES).collect();
        return Err(TestkitError::BuildFailed {
            status: output.status,
            stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let path = target_dir
        .join("debug")
        .join(format!("sockudo{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        return Err(TestkitError::BinaryNotFound {
            searched: vec![path],
        });
    }
    *built = Some(path.clone());
    Ok(path)
}

/// The cargo target directory of this test run: `$CARGO_TARGET_DIR`, else the one holding the
/// running test binary (`<target>/debug/deps/<test>`), else `<workspace>/target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_relative() {
            workspace_root().join(dir)
        } else {
            dir
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        let deps = exe.parent();
        if deps
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "deps")
        {
            if let Some(target) = deps.and_then(|d| d.parent()).and_then(|p| p.parent()) {
                return target.to_path_buf();
            }
        }
    }
    workspace_root().join("target")
}

fn binary_candidates() -> Vec<PathBuf> {
    let name = format!("sockudo{}", std::env::consts::EXE_SUFFIX);
    let mut out = Vec::new();
    if let Some(bin) = std::env::var_os("SOCKUDO_BIN") {
        out.push(PathBuf::from(bin));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_relative() {
            workspace_root().join(dir)
        } else {
            dir
        };
        out.push(dir.join("debug").join(&name));
    }
    // Test binaries live in `<target>/debug/deps/`.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent()) {
            out.push(profile_dir.join(&name));
        }
    }
    out.push(workspace_root().join("target").join("debug").join(&name));
    // The same directory can be reached several ways: list each place once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
