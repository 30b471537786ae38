//! Provider clients: one per configured provider, each turning (recipient, message) into one
//! HTTP request and its answer into a [`SendResult`].

pub(crate) mod apns;
pub(crate) mod fcm;
pub(crate) mod jwt;
pub(crate) mod webpush;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::model::{Message, Recipient};
use super::PushError;
use crate::config::PushSection;

/// How one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Accepted by the provider.
    Sent,
    /// The token / subscription is no longer valid: remove the registration.
    Invalid(String),
    /// Try again later (`after`: the provider's `Retry-After`); `throttled` for 429.
    Retry {
        after: Option<Duration>,
        reason: String,
        throttled: bool,
    },
    /// Will not work however often it is tried (bad request, auth refused, …).
    Permanent(String),
}

impl SendResult {
    /// The error class for metrics (`ok` when sent).
    pub fn class(&self) -> &'static str {
        match self {
            SendResult::Sent => "ok",
            SendResult::Invalid(_) => "invalid_token",
            SendResult::Retry {
                throttled: true, ..
            } => "throttled",
            SendResult::Retry { .. } => "unavailable",
            SendResult::Permanent(_) => "rejected",
        }
    }
}

/// A provider client.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Send `message` to `recipient` (of this provider's transport).
    async fn send(&self, recipient: &Recipient, message: &Message) -> SendResult;
}

/// The configured providers.
#[derive(Debug, Default)]
pub struct Providers {
    fcm: Option<Arc<dyn Provider>>,
    apns: Option<Arc<dyn Provider>>,
    web: Option<Arc<dyn Provider>>,
}

impl Providers {
    /// Build the providers whose credentials are configured (read from their files now).
    pub fn from_settings(s: &PushSection) -> Result<Providers, PushError> {
        let client = http_client()?;
        let (fcm, apns, web) = s.providers();
        Ok(Providers {
            fcm: if fcm {
                Some(Arc::new(fcm::Fcm::from_settings(s, client.clone())?))
            } else {
                None
            },
            apns: if apns {
                Some(Arc::new(apns::Apns::from_settings(s)?))
            } else {
                None
            },
            web: if web {
                Some(Arc::new(webpush::WebPush::from_settings(s, client)?))
            } else {
                None
            },
        })
    }

    /// The provider named `name` (`fcm`, `apns`, `webPush`), when configured.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        match name {
            "fcm" => self.fcm.as_ref(),
            "apns" => self.apns.as_ref(),
            "webPush" => self.web.as_ref(),
            _ => None,
        }
    }

    /// Names of the configured providers.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("fcm", &self.fcm),
            ("apns", &self.apns),
            ("webPush", &self.web),
        ]
        .into_iter()
        .filter(|(_, p)| p.is_some())
        .map(|(n, _)| n)
        .collect()
    }
}

/// The HTTP/1.1 + HTTP/2 (ALPN) client of FCM and Web Push.
fn http_client() -> Result<reqwest::Client, PushError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| PushError::Config(format!("push HTTP client: {e}")))
}

/// `Retry-After` in seconds (an HTTP date is not honoured: backoff applies), capped at 1 h.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// The usual mapping of an HTTP status that is not a success.
pub fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> SendResult {
    let reason = format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>()
    );
    match status {
        429 => SendResult::Retry {
            after: retry_after(headers),
            reason,
            throttled: true,
        },
        408 | 500..=599 => SendResult::Retry {
            after: retry_after(headers),
            reason,
            throttled: false,
        },
        _ => SendResult::Permanent(reason),
    }
}

/// A network error: retried.
pub fn network(e: reqwest::Error) -> SendResult {
    SendResult::Retry {
        after: None,
        reason: format!("network: {}", e.without_url()),
        throttled: false,
    }
}
