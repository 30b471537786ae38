//! Channel authorization and user authentication.
//!
//! The client never holds the app secret. Private, encrypted and presence subscriptions and
//! `signin` ask an [`Authorizer`]: either your own async code ([`authorizer_fn`] or a type
//! implementing the trait) or [`HttpAuthorizer`], which posts a form to your backend exactly
//! as pusher-js does (`socket_id` and `channel_name` for channels, `socket_id` for users).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// What the client asks for when subscribing to a channel that needs a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAuthRequest {
    /// The connection asking (from `connection_established`).
    pub socket_id: String,
    /// The channel to sign for.
    pub channel_name: String,
}

/// An auth endpoint's answer for a channel (the pusher-js JSON shape).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelAuth {
    /// `"{app_key}:{hex signature}"`.
    pub auth: String,
    /// Presence only: the exact JSON string that was signed (`{"user_id", "user_info"?}`).
    #[serde(default)]
    pub channel_data: Option<String>,
    /// Encrypted channels only: base64 of the 32-byte secretbox key.
    #[serde(default)]
    pub shared_secret: Option<String>,
}

impl ChannelAuth {
    /// An answer with only `auth` (private channels).
    pub fn new(auth: impl Into<String>) -> Self {
        ChannelAuth {
            auth: auth.into(),
            channel_data: None,
            shared_secret: None,
        }
    }
}

/// An auth endpoint's answer for `signin`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserAuth {
    /// `"{app_key}:{hex signature}"` over `"{socket_id}::user::{user_data}"`.
    pub auth: String,
    /// The exact JSON string that was signed; must hold a string `id`.
    pub user_data: String,
}

/// Signs subscriptions and signins for this client (usually by asking your backend).
#[async_trait]
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Authorize `request.channel_name` for `request.socket_id`.
    async fn authorize_channel(&self, request: ChannelAuthRequest) -> Result<ChannelAuth>;

    /// Authenticate the user of `socket_id` for `signin`. Unsupported unless overridden.
    async fn authenticate_user(&self, socket_id: &str) -> Result<UserAuth> {
        let _ = socket_id;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this authorizer does not support user signin",
        ))
    }
}

/// An [`Authorizer`] made of an async closure (channels only).
pub struct FnAuthorizer<F> {
    f: F,
}

impl<F> fmt::Debug for FnAuthorizer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAuthorizer")
    }
}

/// Wrap `f` (`ChannelAuthRequest -> impl Future<Output = Result<ChannelAuth>>`) as an
/// [`Authorizer`].
pub fn authorizer_fn<F, Fut>(f: F) -> FnAuthorizer<F>
where
    F: Fn(ChannelAuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ChannelAuth>> + Send + 'static,
{
    FnAuthorizer { f }
}

#[async_trait]
impl<F, Fut> Authorizer for FnAuthorizer<F>
where
    F: Fn(ChannelAuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ChannelAuth>> + Send + 'static,
{
    async fn authorize_channel(&self, request: ChannelAuthRequest) -> Result<ChannelAuth> {
        (self.f)(request).await
    }
}

/// Posts `application/x-www-form-urlencoded` requests to your auth endpoints, as pusher-js
/// does: `socket_id` + `channel_name` to the channel endpoint, `socket_id` to the user one.
#[derive(Debug, Clone)]
pub struct HttpAuthorizer {
    channel_endpoint: String,
    user_endpoint: Option<String>,
    headers: Vec<(String, String)>,
    params: Vec<(String, String)>,
    timeout: Duration,
    http: reqwest::Client,
}

impl HttpAuthorizer {
    /// Authorize channels at `channel_endpoint` (e.g. `https://example.com/pusher/auth`).
    pub fn new(channel_endpoint: impl Into<String>) -> Self {
        HttpAuthorizer {
            channel_endpoint: channel_endpoint.into(),
            user_endpoint: None,
            headers: Vec::new(),
            params: Vec::new(),
            timeout: Duration::from_secs(10),
            http: reqwest::Client::new(),
        }
    }

    /// Authenticate users for `signin` at `endpoint` (pusher-js: `/pusher/user-auth`).
    pub fn user_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.user_endpoint = Some(endpoint.into());
        self
    }

    /// Send `name: value` with every request (e.g. a session cookie or bearer token).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Add `name=value` to every form (pusher-js `auth.params`).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Give up on the endpoint after `timeout` (the subscribe or signin then fails).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        form: Vec<(String, String)>,
    ) -> Result<T> {
        let mut request = self.http.post(url).timeout(self.timeout).form(&form);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|e| {
            Error::new(
                ErrorKind::Auth,
                format!("auth endpoint {url} unreachable: {e}"),
            )
            .with_source(e)
        })?;
        let status = response.status();
        let body = response.text().await.map_err(|e| {
            Error::new(
                ErrorKind::Auth,
                format!("auth endpoint {url}: reading the body failed: {e}"),
            )
        })?;
        if !status.is_success() {
            return Err(Error::new(
                ErrorKind::Auth,
                format!("auth endpoint {url} answered {status}: {body}"),
            )
            .with_code(Some(status.as_u16())));
        }
        serde_json::from_str(&body).map_err(|e| {
            Error::new(
                ErrorKind::Auth,
                format!("auth endpoint {url} answered invalid JSON: {e}"),
            )
        })
    }

    fn form(&self, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain(self.params.iter().cloned())
            .collect()
    }
}

#[async_trait]
impl Authorizer for HttpAuthorizer {
    async fn authorize_channel(&self, request: ChannelAuthRequest) -> Result<ChannelAuth> {
        let form = self.form(&[
            ("socket_id", &request.socket_id),
            ("channel_name", &request.channel_name),
        ]);
        self.post(&self.channel_endpoint, form).await
    }

    async fn authenticate_user(&self, socket_id: &str) -> Result<UserAuth> {
        let Some(url) = self.user_endpoint.as_deref() else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "no user auth endpoint configured (HttpAuthorizer::user_endpoint)",
            ));
        };
        let form = self.form(&[("socket_id", socket_id)]);
        self.post(url, form).await
    }
}

/// A shared authorizer, as the options hold it.
pub type SharedAuthorizer = Arc<dyn Authorizer>;
