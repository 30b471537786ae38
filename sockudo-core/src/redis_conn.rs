//! The one way every Redis-backed part connects (feature `redis`).
//!
//! A `ConnectionManager` reconnects by itself: an immediate attempt, then two more about
//! 1–2 s apart; a later command that hits an I/O error starts a new round, so a restarted
//! Redis is picked up within about 2 s while a dead one costs about one attempt per second.
//! Connecting also proves the server answers (`PING`), so a node with an unreachable Redis
//! fails at start with a clear error instead of at its first request.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

/// Connect to `url` with per-command `op_timeout`; the whole connect + `PING` must finish
/// within `connect_timeout`. The error is a one-line message for the caller's error type.
pub(crate) async fn connect_manager(
    url: &str,
    op_timeout: Duration,
    connect_timeout: Duration,
) -> Result<ConnectionManager, String> {
    let client = Client::open(url).map_err(|e| format!("invalid redis url: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(op_timeout)
        .set_response_timeout(op_timeout)
        .set_number_of_retries(2)
        .set_factor(2)
        .set_max_delay(1000);
    let connect = async {
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| e.to_string())?;
        let _: Value = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(conn)
    };
    match tokio::time::timeout(connect_timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "redis did not answer within {} ms",
            connect_timeout.as_millis()
        )),
    }
}
