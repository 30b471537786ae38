//! Small helpers shared by the process-based servers.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::TestkitError;

/// A loopback port that was free a moment ago: bind `127.0.0.1:0`, read the port, release it.
///
/// Another process can take it before ours binds; callers retry on a bind failure.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| TestkitError::io("bind 127.0.0.1:0 to pick a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| TestkitError::io("read the picked port", e))?
        .port();
    Ok(port)
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// SIGKILL the child (if it still runs) and reap it.
pub(crate) fn kill_and_reap(child: &mut Child) -> Result<ExitStatus, TestkitError> {
    if let Some(status) = child
        .try_wait()
        .map_err(|e| TestkitError::io("poll child process", e))?
    {
        return Ok(status);
    }
    // `kill` fails only when the process already exited, which `wait` then reports.
    let _ = child.kill();
    child
        .wait()
        .map_err(|e| TestkitError::io("wait for killed child process", e))
}

/// Wait (polling, without blocking the runtime) until the child exits or `timeout` passes.
pub(crate) async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<ExitStatus>, TestkitError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| TestkitError::io("poll child process", e))?
        {
            return Ok(Some(status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a log file, or an empty string when it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh scratch directory under the system temp dir.
pub(crate) fn scratch_dir(prefix: &str) -> Result<std::path::PathBuf, TestkitError> {
    let dir = std::env::temp_dir().join(format!(
        "sockudo-testkit-{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| TestkitError::io(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

/// Is `program` an executable file somewhere on PATH?
pub(crate) fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Whether something accepts TCP connections at `addr` (the readiness probe of brokers that
/// are ready once they listen).
pub(crate) async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// The child process of a broker launcher: spawned with stdout and stderr appended to its log
/// file, awaited until a readiness probe passes (an early exit fails with the log's tail),
/// SIGKILLed and reaped by [`ServerChild::kill`], and spawned again for a restart. The
/// launcher keeps ports and files, so a restart looks to clients like the same broker.
#[derive(Debug)]
pub(crate) struct ServerChild {
    what: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerChild {
    /// Not running yet; `what` names the process in errors, `log` collects its output.
    pub(crate) fn new(what: impl Into<String>, log: PathBuf) -> ServerChild {
        ServerChild {
            what: what.into(),
            log,
            child: None,
        }
    }

    /// Spawn `cmd` (stdin closed, output appended to the log) and wait until `ready` is true,
    /// polling every `poll` for up to `timeout` (then it is killed); `ready_what` says what is
    /// awaited.
    pub(crate) async fn start<F, Fut>(
        &mut self,
        cmd: &mut Command,
        timeout: Duration,
        poll: Duration,
        ready_what: &str,
        mut ready: F,
    ) -> Result<(), TestkitError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| TestkitError::io(format!("create {}", self.log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("clone log handle", e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawn {}", self.what), e))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| TestkitError::io(format!("poll {}", self.what), e))?
                {
                    self.child = None;
                    return Err(TestkitError::ProcessExited {
                        what: self.what.clone(),
                        status,
                        log_tail: log_tail(&self.log, 10),
                    });
                }
            }
            if ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill()?;
                return Err(TestkitError::timeout(
                    format!("{} to {ready_what}", self.what),
                    timeout,
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Whether the process is alive.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id while it runs (to sample its CPU, for instance).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap the process (a crash). Idempotent.
    pub(crate) fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }
}
