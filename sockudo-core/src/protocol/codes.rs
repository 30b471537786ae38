//! Pusher error and close codes (4000–4399), in one table.
//!
//! The same numbers serve as WebSocket close codes and as the `code` of `pusher:error`; the
//! range tells clients how to reconnect (docs/protocol.md §4), so picking the wrong one changes
//! client behaviour, not just a log line.

/// Every code this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Only TLS connections allowed.
    SslOnly = 4000,
    /// No app with this key.
    AppNotFound = 4001,
    /// App exists but is disabled.
    AppDisabled = 4003,
    /// The app's connection quota is reached.
    OverConnectionQuota = 4004,
    /// Path not found.
    PathNotFound = 4005,
    /// Malformed version parameter.
    InvalidVersionFormat = 4006,
    /// Protocol version not supported.
    UnsupportedProtocol = 4007,
    /// No protocol parameter given.
    NoProtocol = 4008,
    /// Connection unauthorized (bad signin).
    Unauthorized = 4009,
    /// Over capacity, or a slow consumer whose outbound buffer filled up: reconnect later.
    OverCapacity = 4100,
    /// Generic reconnect-now code; also used while draining.
    ReconnectImmediately = 4200,
    /// The client did not answer a ping in time.
    PongNotReceived = 4201,
    /// Closed after inactivity.
    ClosedForInactivity = 4202,
    /// Client event rate limit exceeded.
    ClientEventRateLimited = 4301,
}

impl ErrorCode {
    /// The numeric close or error code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The human message sent with the code.
    pub const fn message(self) -> &'static str {
        match self {
            ErrorCode::SslOnly => "Only TLS connections are allowed",
            ErrorCode::AppNotFound => "App key not found",
            ErrorCode::AppDisabled => "App is disabled",
            ErrorCode::OverConnectionQuota => "App is over its connection quota",
            ErrorCode::PathNotFound => "Path not found",
            ErrorCode::InvalidVersionFormat => "Invalid version format",
            ErrorCode::UnsupportedProtocol => "Unsupported protocol version",
            ErrorCode::NoProtocol => "No protocol version supplied",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::OverCapacity => "Over capacity",
            ErrorCode::ReconnectImmediately => "Server is going away, reconnect",
            ErrorCode::PongNotReceived => "Pong reply not received",
            ErrorCode::ClosedForInactivity => "Closed due to inactivity",
            ErrorCode::ClientEventRateLimited => "Client event rate limit exceeded",
        }
    }

    /// Whether the code ends the connection (close frame) rather than only reporting an error.
    pub const fn closes_connection(self) -> bool {
        !matches!(self, ErrorCode::ClientEventRateLimited)
    }
}
