//! Event names of both protocol families.

/// Sent by the server first, with `socket_id` and `activity_timeout`.
pub const CONNECTION_ESTABLISHED: &str = "connection_established";
/// `…:error`.
pub const ERROR: &str = "error";
/// `…:ping`.
pub const PING: &str = "ping";
/// `…:pong`.
pub const PONG: &str = "pong";
/// `…:subscribe`.
pub const SUBSCRIBE: &str = "subscribe";
/// `…:unsubscribe`.
pub const UNSUBSCRIBE: &str = "unsubscribe";
/// `…:signin`.
pub const SIGNIN: &str = "signin";
/// `…:signin_success`.
pub const SIGNIN_SUCCESS: &str = "signin_success";
/// `…:subscription_error`.
pub const SUBSCRIPTION_ERROR: &str = "subscription_error";
/// `…:cache_miss`.
pub const CACHE_MISS: &str = "cache_miss";
/// `*_internal:` events.
pub const SUBSCRIPTION_SUCCEEDED: &str = "subscription_succeeded";
/// `…_internal:member_added`.
pub const MEMBER_ADDED: &str = "member_added";
/// `…_internal:member_removed`.
pub const MEMBER_REMOVED: &str = "member_removed";
/// V2 only: a serial taken by a message withheld from this connection (see
/// `OutboundFrame::position`).
pub const POSITION: &str = "position";

/// Prefix of events clients may send to each other.
pub const CLIENT_EVENT_PREFIX: &str = "client-";

/// The system-event family of a protocol version: `pusher` for V1, `sockudo` for V2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Protocol 7: `pusher:` and `pusher_internal:`.
    Pusher,
    /// V2: `sockudo:` and `sockudo_internal:`.
    Sockudo,
}

impl Family {
    /// The prefix of public system events (`pusher:`).
    pub const fn prefix(self) -> &'static str {
        match self {
            Family::Pusher => "pusher:",
            Family::Sockudo => "sockudo:",
        }
    }

    /// The prefix of internal system events (`pusher_internal:`).
    pub const fn internal_prefix(self) -> &'static str {
        match self {
            Family::Pusher => "pusher_internal:",
            Family::Sockudo => "sockudo_internal:",
        }
    }
}

/// What a received event name means, independent of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind<'a> {
    /// `pusher:NAME` or `sockudo:NAME`.
    System(Family, &'a str),
    /// `pusher_internal:NAME` or `sockudo_internal:NAME`: only servers may send these.
    Internal(Family, &'a str),
    /// `client-NAME`.
    Client,
    /// Anything else (an app event, which clients may not send).
    Other,
}

/// Classify an event name as sent by a client.
pub fn classify(event: &str) -> EventKind<'_> {
    if let Some(rest) = event.strip_prefix("pusher:") {
        EventKind::System(Family::Pusher, rest)
    } else if let Some(rest) = event.strip_prefix("sockudo:") {
        EventKind::System(Family::Sockudo, rest)
    } else if let Some(rest) = event.strip_prefix("pusher_internal:") {
        EventKind::Internal(Family::Pusher, rest)
    } else if let Some(rest) = event.strip_prefix("sockudo_internal:") {
        EventKind::Internal(Family::Sockudo, rest)
    } else if event.starts_with(CLIENT_EVENT_PREFIX) {
        EventKind::Client
    } else {
        EventKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_both_families() {
        assert_eq!(
            classify("pusher:ping"),
            EventKind::System(Family::Pusher, "ping")
        );
        assert_eq!(
            classify("sockudo:resume"),
            EventKind::System(Family::Sockudo, "resume")
        );
        assert_eq!(
            classify("pusher_internal:member_added"),
            EventKind::Internal(Family::Pusher, "member_added")
        );
        assert_eq!(classify("client-x"), EventKind::Client);
        assert_eq!(classify("my-event"), EventKind::Other);
    }
}
