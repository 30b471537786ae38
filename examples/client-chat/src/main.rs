//! `client-chat`: a terminal presence chat over sockudo-client.
//!
//! Everyone in the room sees who is online (the presence member list, joins and leaves),
//! and each line typed is sent to the others as a `client-message` client event.
//!
//! # Run with
//! ```text
//! cargo run -p sockudo-server --bin sockudo          # memory defaults: app-key/app-secret on :6001
//! cargo run -p client-chat -- alice                  # in a second terminal
//! cargo run -p client-chat -- bob                    # in a third
//! ```
//! Arguments: `USER [ROOM] [URL]`, defaults `presence-lobby` and `ws://127.0.0.1:6001`.
//! Type a line and press enter to send it; `/who` lists the members; `/quit` (or EOF) leaves.
//!
//! For the demo the authorizer signs locally with the app secret
//! (`sockudo_core::auth::sign_channel`); a real app asks its backend (`HttpAuthorizer`) so the
//! secret never reaches clients.

use std::process::ExitCode;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;
use sockudo_client::{
    Authorizer, ChannelAuth, ChannelAuthRequest, ChannelEvent, Client, ClientEvent, ClientOptions,
    ConnectionState,
};
use sockudo_core::auth::sign_channel;
use tokio::io::{AsyncBufReadExt, BufReader};

const APP_KEY: &str = "app-key";
const APP_SECRET: &str = "app-secret";

/// Signs presence subscriptions for one user, as an app backend would.
#[derive(Debug)]
struct DemoBackend {
    user: String,
}

#[async_trait]
impl Authorizer for DemoBackend {
    async fn authorize_channel(
        &self,
        req: ChannelAuthRequest,
    ) -> sockudo_client::Result<ChannelAuth> {
        let channel_data =
            json!({ "user_id": self.user, "user_info": { "name": self.user } }).to_string();
        let auth = sign_channel(
            APP_KEY,
            APP_SECRET,
            &req.socket_id,
            &req.channel_name,
            Some(&channel_data),
        );
        Ok(ChannelAuth {
            auth,
            channel_data: Some(channel_data),
            shared_secret: None,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(user) = args.first().cloned() else {
        eprintln!("usage: client-chat USER [ROOM] [URL]");
        return ExitCode::from(2);
    };
    let room = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "presence-lobby".into());
    let url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:6001".into());
    match run(user, room, url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client-chat: {e} [{}]", e.kind());
            ExitCode::FAILURE
        }
    }
}

async fn run(user: String, room: String, url: String) -> sockudo_client::Result<()> {
    let opts = ClientOptions::new(APP_KEY)
        .url(&url)?
        .authorizer(DemoBackend { user: user.clone() });
    let client = Client::connect(opts).await?;
    let mut sub = client.subscribe(room.as_str()).await?;
    let names: Vec<String> = sub.members().into_iter().map(|m| m.user_id).collect();
    println!("joined {room} as {user}; online: {}", names.join(", "));

    let mut events = client.events();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match line.trim() {
                    "" => {}
                    "/quit" => break,
                    "/who" => {
                        let names: Vec<String> = sub.members().into_iter().map(|m| m.user_id).collect();
                        println!("online ({}): {}", names.len(), names.join(", "));
                    }
                    text => {
                        if let Err(e) = client.trigger(&room, "client-message", json!({ "text": text })).await {
                            println!("! not sent: {e}");
                        }
                    }
                }
            }
            event = sub.next() => match event {
                Some(ChannelEvent::Message(m)) if m.event == "client-message" => {
                    let from = m.user_id.as_deref().unwrap_or("?");
                    let text = m.data.get("text").and_then(|t| t.as_str()).unwrap_or_default();
                    println!("<{from}> {text}");
                }
                Some(ChannelEvent::MemberAdded(m)) => println!("* {} joined", m.user_id),
                Some(ChannelEvent::MemberRemoved(m)) => println!("* {} left", m.user_id),
                Some(ChannelEvent::Resubscribed) => println!("* reconnected; messages sent meanwhile were missed"),
                Some(other) => println!("* {other:?}"),
                None => break,
            },
            Ok(event) = events.recv() => match event {
                ClientEvent::State(ConnectionState::Disconnected { reason, retry_in, .. }) => {
                    println!("* disconnected ({reason}), retrying in {retry_in:?}");
                }
                ClientEvent::State(ConnectionState::Failed { reason, .. }) => {
                    println!("* connection failed for good: {reason}");
                    break;
                }
                ClientEvent::ServerError { message, code } => println!("! server: {message} ({code:?})"),
                _ => {}
            },
        }
    }
    client.close().await
}
