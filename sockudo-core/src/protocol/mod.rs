//! Wire protocol: what travels on the WebSocket.
//!
//! Protocol 7 ("V1") is Pusher's; V2 is ours (`sockudo:` event family, message ids, serials).
//! Everything that knows about the double-encoded `data` of system events lives in
//! [`frame`], so no caller ever has to remember which events encode `data` as a string.

pub mod codes;
pub mod data_size;
pub mod events;
pub mod frame;

pub use codes::ErrorCode;
pub use frame::{ClientFrame, FrameError, MessageMeta, OutboundFrame, ProtocolVersion};
