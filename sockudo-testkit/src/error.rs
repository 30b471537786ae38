//! [`TestkitError`]: the one error type of the testkit.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::client::CloseOutcome;

/// Everything that can go wrong while starting, driving or observing test infrastructure.
///
/// Messages are written for the person reading a failed test: they say what was being done
/// and, for child processes, include the tail of the process's log.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An executable the testkit needs is not installed.
    #[error("`{program}` was not found on PATH: {hint}")]
    ProgramNotFound {
        /// The program name.
        program: &'static str,
        /// How to get it.
        hint: &'static str,
    },

    /// The `sockudo` binary does not exist where it was looked for.
    #[error("the sockudo binary was not found (looked at: {}). Fix: use `sockudo_testkit::ensure_sockudo_binary()` \
             (process mode of `Cluster` does), which builds it; or run `cargo build -p sockudo-server --bin sockudo` \
             in the sockudo workspace; or set SOCKUDO_BIN to the path of a sockudo binary", display_paths(.searched))]
    BinaryNotFound {
        /// Every location tried, in order.
        searched: Vec<PathBuf>,
    },

    /// Building the `sockudo` binary failed.
    #[error("`cargo build -p sockudo-server --bin sockudo` failed ({status}): {stderr_tail}")]
    BuildFailed {
        /// Exit status of cargo.
        status: ExitStatus,
        /// The last lines cargo printed.
        stderr_tail: String,
    },

    /// A child process exited while it was expected to run.
    #[error("{what} exited unexpectedly with {status}{}", log_suffix(.log_tail))]
    ProcessExited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log, when one was captured.
        log_tail: String,
    },

    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the testkit waited.
        after: Duration,
    },

    /// The WebSocket client failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),

    /// The WebSocket closed while an event was awaited.
    #[error("websocket closed ({0}) while waiting for {1}")]
    Closed(CloseOutcome, String),

    /// An HTTP request failed below the HTTP level (connect, read, ...).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),

    /// A JSON document could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    /// The server said something the Pusher protocol does not allow, or refused an action.
    #[error("protocol: {0}")]
    Protocol(String),

    /// An event arrived that the test said must not arrive.
    #[error("unexpected event {name:?}: {frame}")]
    UnexpectedEvent {
        /// The event name.
        name: String,
        /// The whole frame.
        frame: serde_json::Value,
    },

    /// An in-process node could not be built or its thread failed.
    #[error("node: {0}")]
    Node(String),

    /// The Docker Engine (containers mode) failed or refused a request; the message says
    /// which request and includes the engine's answer.
    #[error("docker: {0}")]
    Docker(String),

    /// A V2 client (`sockudo-client`) failed: connecting, subscribing or closing.
    #[error("v2 client: {0}")]
    V2Client(#[from] sockudo_client::Error),

    /// The caller asked for something that does not exist (a node index, a stopped server, ...).
    #[error("invalid use: {0}")]
    Usage(String),
}

impl TestkitError {
    /// Wrap an I/O error with what the testkit was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }

    /// A timeout error.
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        TestkitError::Timeout {
            what: what.into(),
            after,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for TestkitError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        TestkitError::WebSocket(Box::new(e))
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{tail}")
    }
}
