//! The kinds of a V2 recovery verdict: [`RecoveryCode`] (why continuity is not proven) and
//! [`RecoverySource`] (where a successful resume replayed from).

use std::fmt;

use serde::Deserialize;

/// Why a channel's continuity is not proven ([`RecoveryFailure::code`](crate::RecoveryFailure)).
/// The first four come from the server (`sockudo:resume_failed`), the others are decided by
/// the client itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecoveryCode {
    /// The stream id changed: the old stream's continuity is lost.
    StreamReset,
    /// Messages after the position are no longer kept (or the replay budget was exceeded).
    PositionExpired,
    /// Serials were skipped and could not be proven (or recovered).
    ContinuityUnverifiable,
    /// The server's history store could not answer.
    PersistenceUnavailable,
    /// Client side: no answer to a resume within `ClientOptions::resume_timeout`.
    ResumeTimeout,
    /// Client side: more frames waited behind a gap than `GapLimits` allow.
    GapOverflow,
    /// Client side: the subscription's buffer was full and events were dropped.
    ClientLagged,
    /// A code this client version does not know (kept as sent).
    Other(String),
}

impl RecoveryCode {
    /// The wire name (`stream_reset`, …).
    pub fn as_str(&self) -> &str {
        match self {
            RecoveryCode::StreamReset => "stream_reset",
            RecoveryCode::PositionExpired => "position_expired",
            RecoveryCode::ContinuityUnverifiable => "continuity_unverifiable",
            RecoveryCode::PersistenceUnavailable => "persistence_unavailable",
            RecoveryCode::ResumeTimeout => "resume_timeout",
            RecoveryCode::GapOverflow => "gap_overflow",
            RecoveryCode::ClientLagged => "client_lagged",
            RecoveryCode::Other(code) => code,
        }
    }

    /// The code named `s` on the wire.
    pub fn parse(s: &str) -> Self {
        match s {
            "stream_reset" => RecoveryCode::StreamReset,
            "position_expired" => RecoveryCode::PositionExpired,
            "continuity_unverifiable" => RecoveryCode::ContinuityUnverifiable,
            "persistence_unavailable" => RecoveryCode::PersistenceUnavailable,
            "resume_timeout" => RecoveryCode::ResumeTimeout,
            "gap_overflow" => RecoveryCode::GapOverflow,
            "client_lagged" => RecoveryCode::ClientLagged,
            other => RecoveryCode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RecoveryCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Where a successful resume replayed a channel from (`resume_success.recovered[].source`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(from = "String")]
#[non_exhaustive]
pub enum RecoverySource {
    /// The node's in-memory ring of recent messages.
    Hot,
    /// The shared history store.
    Cold,
    /// The server named no source.
    #[default]
    Unspecified,
    /// A source this client version does not know (kept as sent).
    Other(String),
}

impl RecoverySource {
    /// The wire name (`hot`, `cold`; empty when unspecified).
    pub fn as_str(&self) -> &str {
        match self {
            RecoverySource::Hot => "hot",
            RecoverySource::Cold => "cold",
            RecoverySource::Unspecified => "",
            RecoverySource::Other(s) => s,
        }
    }
}

impl From<String> for RecoverySource {
    fn from(s: String) -> Self {
        match s.as_str() {
            "hot" => RecoverySource::Hot,
            "cold" => RecoverySource::Cold,
            "" => RecoverySource::Unspecified,
            _ => RecoverySource::Other(s),
        }
    }
}

impl fmt::Display for RecoverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RecoverySource {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for name in [
            "stream_reset",
            "position_expired",
            "continuity_unverifiable",
            "persistence_unavailable",
            "resume_timeout",
            "gap_overflow",
            "client_lagged",
            "something_new",
        ] {
            assert_eq!(RecoveryCode::parse(name).as_str(), name);
        }
        assert!(matches!(RecoveryCode::parse("x"), RecoveryCode::Other(_)));
        assert_eq!(
            RecoverySource::from("cold".to_owned()),
            RecoverySource::Cold
        );
        assert_eq!(
            RecoverySource::from(String::new()),
            RecoverySource::Unspecified
        );
    }
}
