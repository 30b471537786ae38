//! Small helpers shared by the process-based servers.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ExitStatus};
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
