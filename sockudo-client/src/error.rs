//! The one error type of the crate, with a stable [`ErrorKind`] to match on.

use std::fmt;
use std::sync::Arc;

/// What went wrong, in a form that stays stable across releases: match on this, not on
/// the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A caller-supplied value is invalid (channel name, event name, options).
    InvalidArgument,
    /// The WebSocket could not be opened or broke (I/O, TLS, handshake).
    Connection,
    /// The server closed the connection with a code that forbids reconnecting (4000–4099).
    Rejected,
    /// Channel authorization or user signin failed (authorizer error or refused signature).
    Auth,
    /// The server answered a request with `pusher:error` (e.g. a refused client event).
    Server,
    /// The server refused a client event because of its rate limit (4301).
    RateLimited,
    /// The operation needs a live connection and there is none right now.
    NotConnected,
    /// The operation needs a subscribed channel and it is not (yet) subscribed.
    NotSubscribed,
    /// The client was closed (or its connection task has ended).
    Closed,
    /// No answer within the allotted time.
    Timeout,
    /// The server sent something this client cannot understand.
    Protocol,
    /// An encrypted channel's payload could not be decrypted.
    Decryption,
    /// The feature needs protocol V2 (or a server that supports it).
    Unsupported,
}

impl ErrorKind {
    /// A short stable name, suitable for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Connection => "connection",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Auth => "auth",
            ErrorKind::Server => "server",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::NotConnected => "not_connected",
            ErrorKind::NotSubscribed => "not_subscribed",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Decryption => "decryption",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error of this crate: a [`kind`](Error::kind), a message, the Pusher code when the
/// server gave one, and an optional source. Cheap to clone (events carry errors).
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    code: Option<u16>,
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            code: None,
            source: None,
        }
    }

    /// The same error with the server's Pusher code (4xxx) or HTTP status attached.
    pub fn with_code(mut self, code: Option<u16>) -> Self {
        self.code = code;
        self
    }

    /// The same error with an underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The stable category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's code, if it sent one: a Pusher code (4000–4399) for close codes and
    /// `pusher:error`, an HTTP status for `subscription_error` and auth endpoints.
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn closed() -> Self {
        Error::new(ErrorKind::Closed, "the client is closed")
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(code) = self.code {
            d.field("code", &code);
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(code) = self.code {
            write!(f, " (code {code})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_code_are_kept() {
        let e = Error::new(ErrorKind::Rejected, "App key not found").with_code(Some(4001));
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert_eq!(e.code(), Some(4001));
        assert_eq!(e.to_string(), "rejected: App key not found (code 4001)");
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Connection, "connect").with_source(io);
        assert!(std::error::Error::source(&e).is_some());
    }
}
