//! The WebSocket endpoint: upgrade, per-connection task, and the protocol handler.

mod handler;
mod session;
mod upgrade;

pub use upgrade::{ws_fallback, ws_handler};
