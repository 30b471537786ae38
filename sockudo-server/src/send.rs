//! Publishing from your own code: [`Node::publish`] and its optional parts ([`Publish`]).
//!
//! The same path as the Pusher HTTP API (V2 identity and serial, cache channels, the
//! adapter), without HTTP or signatures: your handler has already decided the caller may.
//! The app's own limits (enabled, event name length, payload size) still apply, so what
//! clients receive is what the HTTP API would have let through.
//!
//! ```no_run
//! # async fn run(node: std::sync::Arc<sockudo_server::Node>) -> Result<(), sockudo_server::send::SendError> {
//! #[derive(serde::Serialize)]
//! struct Todo { id: u32, title: String }
//!
//! // Clients receive `data` as a JSON string, as from the official server SDKs.
//! let published = node
//!     .publish("app-id", "todos", "todo-created", &Todo { id: 1, title: "ship it".into() })
//!     .except_socket("123.456")        // not to the connection that caused it
//!     .idempotency_key("todo-1-created") // a retry is the same message (same serial)
//!     .await?;
//! println!("message {} serial {:?}", published.message_id, published.serial);
//! # Ok(()) }
//! ```

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use sockudo_core::channel::{ChannelError, ChannelName};

use crate::node::Node;
use crate::publish::{
    keyed_message_id, publish_event, EventToPublish, PublishError, Published, MAX_MESSAGE_ID_LEN,
};

/// Why [`Node::publish`] published nothing.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No app has this id.
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    /// The app is disabled.
    #[error("app {0:?} is disabled")]
    AppDisabled(String),
    /// The app manager could not be asked.
    #[error("app manager unavailable: {0}")]
    Apps(String),
    /// The channel name is not valid.
    #[error("invalid channel {name:?}: {source}")]
    Channel {
        /// The name given.
        name: String,
        /// What is wrong with it.
        source: ChannelError,
    },
    /// The event name is empty or longer than the app allows.
    #[error("event name must be 1 to {max} characters")]
    EventName {
        /// The app's `max_event_name_length`.
        max: usize,
    },
    /// The serialised data is larger than the app's `max_event_payload_bytes`.
    #[error("event data is {size} bytes, over the limit of {max} bytes")]
    PayloadTooLarge {
        /// Bytes of the data string.
        size: usize,
        /// The app's limit.
        max: usize,
    },
    /// The data could not be serialised.
    #[error("cannot serialise the event data: {0}")]
    Json(#[from] serde_json::Error),
    /// The socket id to exclude is not a socket id.
    #[error("invalid socket_id {0:?}")]
    SocketId(String),
    /// The message id or idempotency key is empty or too long.
    #[error("{0} must be 1 to {MAX_MESSAGE_ID_LEN} characters")]
    Identity(&'static str),
    /// The publish failed on the way (history store, cache, adapter): nobody got it, or
    /// (after a timeout) some may have; publish again under the same idempotency key.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// One publish being prepared by [`Node::publish`]; `.await` it to send.
#[must_use = "a publish does nothing until it is awaited"]
#[derive(Debug)]
pub struct Publish<'a, T: ?Sized> {
    node: &'a Node,
    app_id: &'a str,
    channel: &'a str,
    event: &'a str,
    data: &'a T,
    except_socket: Option<&'a str>,
    message_id: Option<&'a str>,
    idempotency_key: Option<&'a str>,
}

impl Node {
    /// Publish `event` with `data` on `channel` of app `app_id`, to every subscriber on every
    /// node. `data` is serialised to JSON and sent as a string, as the official server SDKs
    /// do (a `&str` is sent as it is). Optional parts: [`Publish::except_socket`],
    /// [`Publish::idempotency_key`], [`Publish::message_id`]. Await the result to send.
    pub fn publish<'a, T: Serialize + Sync + ?Sized>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        event: &'a str,
        data: &'a T,
    ) -> Publish<'a, T> {
        Publish {
            node: self,
            app_id,
            channel,
            event,
            data,
            except_socket: None,
            message_id: None,
            idempotency_key: None,
        }
    }
}

impl<'a, T: Serialize + Sync + ?Sized> Publish<'a, T> {
    /// Do not deliver to this connection (the one whose action caused the event).
    pub fn except_socket(mut self, socket_id: &'a str) -> Self {
        self.except_socket = Some(socket_id);
        self
    }

    /// Publish under your own message id: V2 clients see it, and the same id within the
    /// dedup window (`MESSAGE_DEDUP_SECS`) is one message with one serial.
    pub fn message_id(mut self, id: &'a str) -> Self {
        self.message_id = Some(id);
        self
    }

    /// Make retries safe: publishes with the same key (and no message id) within the dedup
    /// window are one message, and [`Published::duplicate`] tells a repeat.
    pub fn idempotency_key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Check, encode and publish.
    pub async fn send(self) -> Result<Published, SendError> {
        let app = match self.node.apps.find_by_id(self.app_id).await {
            Ok(Some(app)) => app,
            Ok(None) => return Err(SendError::UnknownApp(self.app_id.to_owned())),
            Err(e) => return Err(SendError::Apps(e.to_string())),
        };
        if !app.enabled {
            return Err(SendError::AppDisabled(app.id.clone()));
        }
        let channel = ChannelName::parse(self.channel).map_err(|source| SendError::Channel {
            name: self.channel.to_owned(),
            source,
        })?;
        if self.event.is_empty() || self.event.len() > app.max_event_name_length {
            return Err(SendError::EventName {
                max: app.max_event_name_length,
            });
        }
        let data = data_string(self.data)?;
        if data.len() > app.max_event_payload_bytes {
            return Err(SendError::PayloadTooLarge {
                size: data.len(),
                max: app.max_event_payload_bytes,
            });
        }
        let data = RawValue::from_string(serde_json::to_string(&data)?)?;
        let except = match self.except_socket {
            None => None,
            Some(s) if sockudo_core::auth::is_valid_socket_id(s) => Some(Arc::<str>::from(s)),
            Some(s) => return Err(SendError::SocketId(s.to_owned())),
        };
        let valid = |s: &str| !s.is_empty() && s.len() <= MAX_MESSAGE_ID_LEN;
        if self.message_id.is_some_and(|m| !valid(m)) {
            return Err(SendError::Identity("message_id"));
        }
        if self.idempotency_key.is_some_and(|k| !valid(k)) {
            return Err(SendError::Identity("idempotency_key"));
        }
        let derived = self
            .idempotency_key
            .filter(|_| self.message_id.is_none())
            .map(keyed_message_id);
        let ev = EventToPublish {
            event: self.event,
            data: &data,
            user_id: None,
            message_id: self.message_id.or(derived.as_deref()),
            extras: None,
            except_socket: except.as_ref(),
        };
        let result = publish_event(self.node, &app.id, &channel, ev).await;
        let outcome = if result.is_ok() {
            crate::metrics::PUBLISHES_ACCEPTED
        } else {
            crate::metrics::PUBLISHES_FAILED
        };
        metrics::counter!(outcome, "app_id" => app.id.clone(), "source" => "embedded").increment(1);
        Ok(result?)
    }
}

impl<'a, T: Serialize + Sync + ?Sized> IntoFuture for Publish<'a, T> {
    type Output = Result<Published, SendError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The event's `data` string: a string as it is, anything else as its JSON text.
fn data_string<T: Serialize + ?Sized>(data: &T) -> Result<String, serde_json::Error> {
    Ok(match serde_json::to_value(data)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::NodeSettings;
    use sockudo_core::app::App;

    fn node() -> Arc<Node> {
        let mut settings = NodeSettings::default();
        let mut app = App::new("1", "k", "s");
        app.max_event_payload_bytes = 32;
        settings.apps = vec![app];
        crate::server::build_node_memory(settings)
    }

    #[tokio::test]
    async fn checks_come_before_publishing() {
        let node = node();
        let err = |r: Result<Published, SendError>| r.unwrap_err().to_string();
        assert!(err(node.publish("2", "c", "e", "x").await).contains("unknown app"));
        assert!(err(node.publish("1", "bad channel", "e", "x").await).contains("invalid channel"));
        assert!(err(node.publish("1", "c", "", "x").await).contains("event name"));
        let big = "x".repeat(33);
        assert!(err(node.publish("1", "c", "e", &big).await).contains("over the limit"));
        let e = node.publish("1", "c", "e", "x").except_socket("nope").await;
        assert!(err(e).contains("socket_id"));
        let long = "k".repeat(MAX_MESSAGE_ID_LEN + 1);
        let e = node
            .publish("1", "c", "e", "x")
            .idempotency_key(&long)
            .await;
        assert!(err(e).contains("idempotency_key"));
    }

    #[tokio::test]
    async fn a_retried_key_is_one_message() {
        let node = node();
        let first = node
            .publish("1", "c", "e", &serde_json::json!({ "a": 1 }))
            .idempotency_key("k1")
            .await
            .unwrap();
        let again = node
            .publish("1", "c", "e", &serde_json::json!({ "a": 1 }))
            .idempotency_key("k1")
            .await
            .unwrap();
        assert_eq!(first.message_id, again.message_id);
        assert_eq!(first.serial, again.serial);
        assert!(!first.duplicate && again.duplicate);
    }

    #[test]
    fn data_is_sent_as_a_string() {
        assert_eq!(data_string("hi").unwrap(), "hi");
        assert_eq!(
            data_string(&serde_json::json!({ "a": 1 })).unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(data_string(&3).unwrap(), "3");
    }
}
