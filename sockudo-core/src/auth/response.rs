//! What your auth endpoint answers: the JSON bodies pusher-js, Laravel Echo and
//! `sockudo-client`'s `HttpAuthorizer` read, built from the app's key and secret.
//!
//! Both clients post a form (`socket_id` and `channel_name` for a channel, `socket_id` for a
//! user signin) to your endpoint; your code decides whether the user may, then answers with
//! one of these responses serialised as JSON:
//!
//! - private channel: `{"auth":"key:hex"}` ([`private_channel_auth`]);
//! - presence channel: `{"auth":"key:hex","channel_data":"{\"user_id\":…}"}`
//!   ([`presence_channel_auth`]); `channel_data` is a JSON *string* and the signature covers
//!   its exact bytes;
//! - user signin: `{"auth":"key:hex","user_data":"{\"id\":…}"}` ([`user_auth`]).
//!
//! ```
//! use sockudo_core::auth::{presence_channel_auth, verify_channel_auth};
//!
//! #[derive(serde::Serialize)]
//! struct Info { name: &'static str }
//!
//! let body = presence_channel_auth(
//!     "app-key", "app-secret", "123.456", "presence-room", "42", Some(&Info { name: "Ada" }),
//! )?;
//! assert_eq!(
//!     body.channel_data.as_deref(),
//!     Some(r#"{"user_id":"42","user_info":{"name":"Ada"}}"#)
//! );
//! // What the node checks when the client subscribes with it:
//! verify_channel_auth(
//!     "app-key", "app-secret", "123.456", "presence-room", body.channel_data.as_deref(), &body.auth,
//! )?;
//! let json = serde_json::to_string(&body)?; // the HTTP response body
//! assert!(json.starts_with(r#"{"auth":"app-key:"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::Serialize;

use super::signature::{sign_channel, sign_user};
use crate::channel::{ChannelKind, ChannelName};

/// Why an auth response cannot be built (each is a bug or a bad request on your side, never
/// something to sign anyway).
#[derive(Debug, thiserror::Error)]
pub enum AuthResponseError {
    /// `socket_id` is not `"{digits}.{digits}"` as the node issues them.
    #[error("invalid socket_id {0:?}")]
    InvalidSocketId(String),
    /// The channel name is not valid at all.
    #[error("invalid channel name: {0}")]
    InvalidChannel(#[from] crate::channel::ChannelError),
    /// The channel is not of the kind this helper signs (e.g. a presence channel given to
    /// [`private_channel_auth`], which would sign without `channel_data`).
    #[error("{channel:?} is not a {expected} channel")]
    WrongKind {
        /// The channel name given.
        channel: String,
        /// The kind the helper signs.
        expected: &'static str,
    },
    /// The user id is empty.
    #[error("the user id must not be empty")]
    EmptyUserId,
    /// The user data of a signin has no non-empty string `id` (the node refuses it).
    #[error("user data must be a JSON object with a non-empty string \"id\"")]
    UserDataWithoutId,
    /// The user info or user data could not be serialised.
    #[error("cannot serialise: {0}")]
    Json(#[from] serde_json::Error),
}

/// The answer for a private or presence channel (`{"auth", "channel_data"?}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelAuthResponse {
    /// `"{app_key}:{hex HMAC-SHA256}"`.
    pub auth: String,
    /// Presence only: the exact JSON string that was signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<String>,
}

/// The answer for a user signin (`{"auth", "user_data"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserAuthResponse {
    /// `"{app_key}:{hex HMAC-SHA256}"` over `"{socket_id}::user::{user_data}"`.
    pub auth: String,
    /// The exact JSON string that was signed.
    pub user_data: String,
}

/// Whether `s` has the shape of the socket ids a node issues: `"{digits}.{digits}"`, each
/// part 1 to 20 digits.
pub fn is_valid_socket_id(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn check_socket_id(socket_id: &str) -> Result<(), AuthResponseError> {
    if is_valid_socket_id(socket_id) {
        Ok(())
    } else {
        Err(AuthResponseError::InvalidSocketId(socket_id.to_owned()))
    }
}

fn check_kind(
    channel: &str,
    kind: ChannelKind,
    expected: &'static str,
) -> Result<(), AuthResponseError> {
    if ChannelName::parse(channel)?.kind() == kind {
        Ok(())
    } else {
        Err(AuthResponseError::WrongKind {
            channel: channel.to_owned(),
            expected,
        })
    }
}

/// Sign a subscription to a `private-` channel (not `private-encrypted-`: those also need a
/// per-channel shared secret, which these helpers do not derive).
pub fn private_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
) -> Result<ChannelAuthResponse, AuthResponseError> {
    check_socket_id(socket_id)?;
    check_kind(channel, ChannelKind::Private, "private")?;
    Ok(ChannelAuthResponse {
        auth: sign_channel(key, secret, socket_id, channel, None),
        channel_data: None,
    })
}

/// Sign a subscription to a `presence-` channel as member `user_id`, with optional
/// `user_info` (any serialisable value; members see it in `pusher:member_added`).
pub fn presence_channel_auth<I: Serialize + ?Sized>(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    user_id: &str,
    user_info: Option<&I>,
) -> Result<ChannelAuthResponse, AuthResponseError> {
    #[derive(Serialize)]
    struct Member<'a, I: Serialize + ?Sized> {
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_info: Option<&'a I>,
    }
    check_socket_id(socket_id)?;
    check_kind(channel, ChannelKind::Presence, "presence")?;
    if user_id.is_empty() {
        return Err(AuthResponseError::EmptyUserId);
    }
    let channel_data = serde_json::to_string(&Member { user_id, user_info })?;
    Ok(ChannelAuthResponse {
        auth: sign_channel(key, secret, socket_id, channel, Some(&channel_data)),
        channel_data: Some(channel_data),
    })
}

/// Sign a user signin. `user` serialises to the user data: an object with a non-empty
/// string `id` (other fields, such as `user_info` or `watchlist`, are passed through).
///
/// ```
/// let body = sockudo_core::auth::user_auth(
///     "app-key", "app-secret", "1.2", &serde_json::json!({ "id": "42", "user_info": { "name": "Ada" } }),
/// )?;
/// sockudo_core::auth::verify_user_auth("app-key", "app-secret", "1.2", &body.user_data, &body.auth)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn user_auth<U: Serialize + ?Sized>(
    key: &str,
    secret: &str,
    socket_id: &str,
    user: &U,
) -> Result<UserAuthResponse, AuthResponseError> {
    check_socket_id(socket_id)?;
    let value = serde_json::to_value(user)?;
    let has_id = value
        .get("id")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|id| !id.is_empty());
    if !has_id {
        return Err(AuthResponseError::UserDataWithoutId);
    }
    let user_data = serde_json::to_string(&value)?;
    Ok(UserAuthResponse {
        auth: sign_user(key, secret, socket_id, &user_data),
        user_data,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::{verify_channel_auth, verify_user_auth};

    #[test]
    fn private_answers_only_auth_and_verifies() {
        let r = private_channel_auth("k", "s", "1.2", "private-a").unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!(r#"{{"auth":"{}"}}"#, r.auth)
        );
        verify_channel_auth("k", "s", "1.2", "private-a", None, &r.auth).unwrap();
        assert!(verify_channel_auth("k", "s", "1.3", "private-a", None, &r.auth).is_err());
    }

    #[test]
    fn wrong_kinds_and_bad_input_are_refused() {
        for (channel, socket) in [
            ("presence-a", "1.2"),
            ("private-encrypted-a", "1.2"),
            ("public", "1.2"),
            ("private-a", "12"),
            ("private-a", "1.x"),
            ("private-a", ".2"),
            ("bad channel", "1.2"),
        ] {
            assert!(
                private_channel_auth("k", "s", socket, channel).is_err(),
                "{channel} {socket}"
            );
        }
        assert!(matches!(
            presence_channel_auth::<()>("k", "s", "1.2", "presence-a", "", None),
            Err(AuthResponseError::EmptyUserId)
        ));
        assert!(presence_channel_auth::<()>("k", "s", "1.2", "private-a", "u", None).is_err());
        for user in [
            serde_json::json!({ "name": "x" }),
            serde_json::json!({ "id": 42 }),
            serde_json::json!({ "id": "" }),
            serde_json::json!("id"),
        ] {
            assert!(matches!(
                user_auth("k", "s", "1.2", &user),
                Err(AuthResponseError::UserDataWithoutId)
            ));
        }
    }

    #[test]
    fn socket_ids() {
        assert!(is_valid_socket_id("123.456"));
        let long = format!("{}.1", "1".repeat(21));
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "1.2a", &long] {
            assert!(!is_valid_socket_id(bad), "{bad}");
        }
    }

    #[test]
    fn presence_without_info_omits_it() {
        let r = presence_channel_auth::<()>("k", "s", "1.2", "presence-a", "u1", None).unwrap();
        let data = r.channel_data.as_deref().unwrap();
        assert_eq!(data, r#"{"user_id":"u1"}"#);
        verify_channel_auth("k", "s", "1.2", "presence-a", Some(data), &r.auth).unwrap();
    }

    #[test]
    fn user_signin_signs_the_exact_string() {
        let r = user_auth("k", "s", "1.2", &serde_json::json!({ "id": "u1" })).unwrap();
        assert_eq!(r.user_data, r#"{"id":"u1"}"#);
        verify_user_auth("k", "s", "1.2", &r.user_data, &r.auth).unwrap();
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["user_data"], r.user_data);
    }
}
