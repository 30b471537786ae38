//! Shared helpers of the integration tests: an in-process node, a signing authorizer that
//! plays the app backend, and event helpers with timeouts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};
use sockudo_client::{
    Authorizer, ChannelAuth, ChannelAuthRequest, ChannelEvent, Client, ClientOptions,
    ConstantBackoff, Message, Subscription, UserAuth,
};
use sockudo_core::auth::{sign_channel, sign_user};
use sockudo_testkit::{ApiClient, TestNode, APP_ID, APP_KEY, APP_SECRET};

pub const WAIT: Duration = Duration::from_secs(5);
pub const MASTER_KEY: &str = "an-encryption-master-key-of-32-bytes!!";

pub async fn node() -> TestNode {
    node_with(sockudo_testkit::test_settings(vec![
        sockudo_testkit::test_app(),
    ]))
    .await
}

pub async fn node_with(settings: sockudo_server::config::NodeSettings) -> TestNode {
    match TestNode::start(settings).await {
        Ok(n) => n,
        Err(e) => panic!("test node did not start: {e}"),
    }
}

pub fn api(node: &TestNode) -> ApiClient {
    ApiClient::new(&node.http_url(), APP_ID, APP_KEY, APP_SECRET)
}

/// Options for the test app on `node`, signing with [`Backend`] as user `user_id`.
pub fn options(node: &TestNode, user_id: &str) -> ClientOptions {
    ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .backoff(ConstantBackoff(Duration::from_millis(100)))
        .request_timeout(WAIT)
        .authorizer(Backend::new(user_id))
}

pub async fn connect(node: &TestNode, user_id: &str) -> Client {
    Client::connect(options(node, user_id)).await.unwrap()
}

/// What an app backend does: sign channels and users with the app secret, derive the
/// per-channel encryption key as the Pusher server SDKs do.
#[derive(Debug, Clone)]
pub struct Backend {
    pub user_id: String,
}

impl Backend {
    pub fn new(user_id: &str) -> Self {
        Backend {
            user_id: user_id.into(),
        }
    }
}

/// `sha256(channel_name + master_key)`, as the Pusher server SDKs derive it.
pub fn shared_secret(channel: &str) -> [u8; 32] {
    Sha256::digest(format!("{channel}{MASTER_KEY}").as_bytes()).into()
}

#[async_trait]
impl Authorizer for Backend {
    async fn authorize_channel(
        &self,
        req: ChannelAuthRequest,
    ) -> sockudo_client::Result<ChannelAuth> {
        let channel = req.channel_name.as_str();
        if channel.starts_with("presence-") {
            let data = serde_json::json!({ "user_id": self.user_id, "user_info": { "name": format!("user {}", self.user_id) } }).to_string();
            let auth = sign_channel(APP_KEY, APP_SECRET, &req.socket_id, channel, Some(&data));
            return Ok(ChannelAuth {
                auth,
                channel_data: Some(data),
                shared_secret: None,
            });
        }
        let mut auth = ChannelAuth::new(sign_channel(
            APP_KEY,
            APP_SECRET,
            &req.socket_id,
            channel,
            None,
        ));
        if channel.starts_with("private-encrypted-") {
            auth.shared_secret =
                Some(base64::engine::general_purpose::STANDARD.encode(shared_secret(channel)));
        }
        Ok(auth)
    }

    async fn authenticate_user(&self, socket_id: &str) -> sockudo_client::Result<UserAuth> {
        let user_data = serde_json::json!({ "id": self.user_id }).to_string();
        Ok(UserAuth {
            auth: sign_user(APP_KEY, APP_SECRET, socket_id, &user_data),
            user_data,
        })
    }
}

pub async fn next_event(sub: &mut Subscription) -> ChannelEvent {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("subscription {} ended", sub.channel()),
        Err(_) => panic!("no event on {} within {WAIT:?}", sub.channel()),
    }
}

pub async fn next_message(sub: &mut Subscription) -> Message {
    match next_event(sub).await {
        ChannelEvent::Message(m) => m,
        other => panic!("expected a message on {}, got {other:?}", sub.channel()),
    }
}

/// No event within `dur`.
pub async fn assert_quiet(sub: &mut Subscription, dur: Duration) {
    if let Ok(event) = tokio::time::timeout(dur, sub.recv()).await {
        panic!("expected no event on {}, got {event:?}", sub.channel());
    }
}

pub async fn publish(node: &TestNode, channel: &str, event: &str, data: serde_json::Value) {
    let (status, body) = api(node).trigger(channel, event, data).await.unwrap();
    assert_eq!(status, 200, "publish to {channel} failed: {body}");
}
