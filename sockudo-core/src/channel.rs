//! Channel names: validation and classification.
//!
//! The prefix decides the rules a channel follows (auth, presence, client events, cache), so
//! every decision in the server starts from [`ChannelName::parse`]; nobody re-inspects prefixes.

use std::fmt;

/// Longest channel name accepted (Pusher's limit).
pub const MAX_CHANNEL_NAME_LEN: usize = 164;

/// Prefix of the signed-in user's own channel.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What kind of channel a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe.
    Public,
    /// `private-`: subscribing needs a signature.
    Private,
    /// `private-encrypted-`: signed, and payloads are end-to-end encrypted.
    PrivateEncrypted,
    /// `presence-`: signed, with a member list.
    Presence,
    /// `#server-to-user-{id}`: only the signed-in user `id` may be on it.
    ServerToUser,
}

impl ChannelKind {
    /// Whether subscribing needs a signature.
    pub const fn requires_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// Whether clients may send `client-` events on it (encrypted channels excluded: the
    /// server cannot check what it cannot read, and Pusher refuses them too).
    pub const fn allows_client_events(self) -> bool {
        matches!(self, ChannelKind::Private | ChannelKind::Presence)
    }

    /// Metric/label name of the class.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::PrivateEncrypted => "encrypted",
            ChannelKind::Presence => "presence",
            ChannelKind::ServerToUser => "user",
        }
    }
}

/// Why a name is not a valid channel.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is too long.
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} characters")]
    TooLong,
    /// The name has a character outside the allowed set.
    #[error("channel name contains an invalid character")]
    InvalidCharacter,
}

/// A validated channel name with its classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    name: &'a str,
    kind: ChannelKind,
    cache: bool,
}

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

impl<'a> ChannelName<'a> {
    /// Validate and classify `name`.
    pub fn parse(name: &'a str) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelError::TooLong);
        }
        if let Some(user) = name.strip_prefix(SERVER_TO_USER_PREFIX) {
            if user.is_empty() || !user.bytes().all(valid_char) {
                return Err(ChannelError::InvalidCharacter);
            }
            return Ok(ChannelName {
                name,
                kind: ChannelKind::ServerToUser,
                cache: false,
            });
        }
        if !name.bytes().all(valid_char) {
            return Err(ChannelError::InvalidCharacter);
        }
        let (kind, cache) = if name.starts_with("private-encrypted-cache-") {
            (ChannelKind::PrivateEncrypted, true)
        } else if name.starts_with("private-encrypted-") {
            (ChannelKind::PrivateEncrypted, false)
        } else if name.starts_with("private-cache-") {
            (ChannelKind::Private, true)
        } else if name.starts_with("private-") {
            (ChannelKind::Private, false)
        } else if name.starts_with("presence-cache-") {
            (ChannelKind::Presence, true)
        } else if name.starts_with("presence-") {
            (ChannelKind::Presence, false)
        } else if name.starts_with("cache-") {
            (ChannelKind::Public, true)
        } else {
            (ChannelKind::Public, false)
        };
        Ok(ChannelName { name, kind, cache })
    }

    /// The name.
    pub const fn as_str(&self) -> &'a str {
        self.name
    }

    /// The channel's kind.
    pub const fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Cache channels replay their last event to new subscribers.
    pub const fn is_cache(&self) -> bool {
        self.cache
    }

    /// Whether it is a presence channel.
    pub const fn is_presence(&self) -> bool {
        matches!(self.kind, ChannelKind::Presence)
    }

    /// For `#server-to-user-{id}`, the user id.
    pub fn server_to_user_id(&self) -> Option<&'a str> {
        match self.kind {
            ChannelKind::ServerToUser => self.name.strip_prefix(SERVER_TO_USER_PREFIX),
            _ => None,
        }
    }
}

impl fmt::Display for ChannelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        let cases = [
            ("news", ChannelKind::Public, false),
            ("cache-news", ChannelKind::Public, true),
            ("private-a", ChannelKind::Private, false),
            ("private-cache-a", ChannelKind::Private, true),
            ("private-encrypted-a", ChannelKind::PrivateEncrypted, false),
            (
                "private-encrypted-cache-a",
                ChannelKind::PrivateEncrypted,
                true,
            ),
            ("presence-a", ChannelKind::Presence, false),
            ("presence-cache-a", ChannelKind::Presence, true),
            ("#server-to-user-42", ChannelKind::ServerToUser, false),
        ];
        for (name, kind, cache) in cases {
            let c = ChannelName::parse(name).unwrap();
            assert_eq!((c.kind(), c.is_cache()), (kind, cache), "{name}");
        }
        assert_eq!(
            ChannelName::parse("#server-to-user-42")
                .unwrap()
                .server_to_user_id(),
            Some("42")
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(165)),
            Err(ChannelError::TooLong)
        );
        assert!(ChannelName::parse(&"a".repeat(164)).is_ok());
        for bad in [
            "a b",
            "a/b",
            "é",
            "a#b",
            "#server-to-user-",
            "x\n",
            "#other",
        ] {
            assert_eq!(
                ChannelName::parse(bad),
                Err(ChannelError::InvalidCharacter),
                "{bad}"
            );
        }
        assert!(ChannelName::parse("a_-=@,.;Z9").is_ok());
    }
}
