//! The WebSocket endpoint: upgrade, per-connection task, and the protocol handler.

mod bucket;
mod handler;
mod resume_waits;
mod session;
mod upgrade;
mod v2;

pub use upgrade::{ws_fallback, ws_handler};
