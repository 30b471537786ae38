//! The connection state, published on a `tokio::sync::watch`.

use std::time::Duration;

use tokio::sync::watch;

/// Where the connection stands. Watch it with [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening the WebSocket (attempt 0 is the first connection).
    Connecting {
        /// 0 for the first connection, then one more per reconnect attempt.
        attempt: u32,
    },
    /// `connection_established` received.
    Connected {
        /// The connection's socket id.
        socket_id: String,
        /// The server's activity timeout.
        activity_timeout: Duration,
    },
    /// The connection ended; the next attempt starts after `retry_in`.
    Disconnected {
        /// The close code, when there was one.
        code: Option<u16>,
        /// Why it ended.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The server refused this client for good (close 4000–4099); no retry.
    Failed {
        /// The close code, when there was one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// Closed by [`Client::close`](crate::Client::close) or because every handle was dropped.
    Closed,
}

impl ConnectionState {
    /// Whether the state is `Connected`.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// No further connection will be attempted.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ConnectionState::Failed { .. } | ConnectionState::Closed
        )
    }

    /// The socket id while connected.
    pub fn socket_id(&self) -> Option<&str> {
        match self {
            ConnectionState::Connected { socket_id, .. } => Some(socket_id),
            _ => None,
        }
    }
}

/// A receiver of state changes (a `watch::Receiver`).
pub type StateWatch = watch::Receiver<ConnectionState>;

/// Wait until `pred` holds for the state, or the connection task ends.
pub async fn wait_for(
    rx: &mut StateWatch,
    pred: impl FnMut(&ConnectionState) -> bool,
) -> Option<ConnectionState> {
    rx.wait_for(pred).await.ok().map(|s| s.clone())
}
