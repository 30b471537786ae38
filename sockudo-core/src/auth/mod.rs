//! Every signature the Pusher protocol uses, in one place.
//!
//! Two submodules, split by who is being authenticated:
//!
//! - [`signature`]: the HMAC-SHA256 primitives and the client-facing signatures built on them:
//!   private/presence channel auth (`"{socket_id}:{channel}[:{channel_data}]"`), user signin
//!   (`"{socket_id}::user::{user_data}"`), plus the webhook signature and the body MD5 that the
//!   HTTP API uses. These are pure functions with no state.
//! - [`api`]: the HTTP API request authentication (the `auth_*` query parameters): parsing a raw
//!   query string into an [`ApiQuery`], verifying it against an app secret, and the inverse
//!   ([`sign_api_request`]) for our own tests, bench tool and client.
//! - [`response`]: the JSON your auth endpoint answers for private and presence channels and
//!   user signin ([`private_channel_auth`], [`presence_channel_auth`], [`user_auth`]).
//!
//! Everything is re-exported here so callers can write `sockudo_core::auth::sign_channel`.
//! Signature comparisons are constant-time; key comparisons are not, because app keys are public.

pub mod api;
pub mod response;
pub mod signature;

pub use api::*;
pub use response::*;
pub use signature::*;
