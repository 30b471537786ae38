//! The V1 presence members: protocol 7 [`TestClient`]s that join one presence channel
//! through the balancer and, whenever their node dies, connect again and re-join under the
//! same user id. After settling every node must list exactly the members joined right then.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chaos::records::{PresenceCheck, PresenceMemberRecord};
use crate::client::{ApiClient, TestClient};

/// The presence channel every member joins.
pub const PRESENCE_CHANNEL: &str = "presence-chaos";

/// How often a member looks for its connection's end (and for the stop signal).
const POLL: Duration = Duration::from_millis(200);
/// Pause before connecting again after a failed connect or join.
const RETRY: Duration = Duration::from_millis(100);
/// Pause between two rounds of the presence check.
const CHECK_PAUSE: Duration = Duration::from_millis(250);

type Shared = Arc<Mutex<PresenceMemberRecord>>;

fn lock(m: &Shared) -> MutexGuard<'_, PresenceMemberRecord> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where and as whom the members connect.
#[derive(Debug, Clone)]
pub(crate) struct MemberSetup {
    /// The protocol 7 WebSocket URL through the balancer.
    pub ws_url: String,
    pub key: String,
    pub secret: String,
}

/// Every presence member of the run.
#[derive(Debug)]
pub(crate) struct PresenceMembers {
    members: Vec<(Shared, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
}

impl PresenceMembers {
    /// Start `n` members (`member-0` …); they keep (re)joining until [`finish`](Self::finish).
    pub fn start(setup: &MemberSetup, n: usize) -> PresenceMembers {
        let (stop, _) = watch::channel(false);
        let members = (0..n)
            .map(|i| {
                let shared: Shared = Arc::new(Mutex::new(PresenceMemberRecord {
                    user_id: format!("member-{i}"),
                    joins: 0,
                    connected_at_end: false,
                }));
                let task =
                    tokio::spawn(member(setup.clone(), Arc::clone(&shared), stop.subscribe()));
                (shared, task)
            })
            .collect();
        PresenceMembers { members, stop }
    }

    /// The user ids whose member is connected and joined right now.
    pub fn joined(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .map(|(m, _)| lock(m))
            .filter(|m| m.connected_at_end)
            .map(|m| m.user_id.clone())
            .collect()
    }

    /// Whether every member is joined.
    pub fn all_joined(&self) -> bool {
        self.joined().len() == self.members.len()
    }

    /// Stop every member (they leave) and return the records, `connected_at_end` as it was
    /// just before the stop.
    pub async fn finish(mut self) -> Vec<PresenceMemberRecord> {
        let members = std::mem::take(&mut self.members);
        let snapshot: Vec<PresenceMemberRecord> =
            members.iter().map(|(m, _)| lock(m).clone()).collect();
        self.stop.send_replace(true);
        for (_, task) in members {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        snapshot
    }
}

impl Drop for PresenceMembers {
    /// A run that ended early must not leave members reconnecting in the background.
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for (_, task) in &self.members {
            task.abort();
        }
    }
}

/// One member: connect, join, wait for the connection's end, again, until stopped.
/// `connected_at_end` is kept true exactly while the member is joined.
async fn member(setup: MemberSetup, me: Shared, stop: watch::Receiver<bool>) {
    let user_id = lock(&me).user_id.clone();
    while !*stop.borrow() {
        let mut client = match join(&setup, &user_id).await {
            Some(client) => client,
            None => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        {
            let mut m = lock(&me);
            m.joins += 1;
            m.connected_at_end = true;
        }
        loop {
            // Only the end of the connection matters; events are dropped.
            let _ = client.events_until(POLL).await;
            if client.close_outcome().is_some() {
                lock(&me).connected_at_end = false;
                break;
            }
            if *stop.borrow() {
                lock(&me).connected_at_end = false;
                let _ = client.close().await;
                return;
            }
        }
    }
}

async fn join(setup: &MemberSetup, user_id: &str) -> Option<TestClient> {
    let mut client = TestClient::connect(&setup.ws_url).await.ok()?;
    let info = json!({ "name": user_id });
    client
        .subscribe_presence(PRESENCE_CHANNEL, &setup.key, &setup.secret, user_id, info)
        .await
        .ok()?;
    Some(client)
}

/// Ask every node for the presence channel's users until each lists exactly the joined
/// members, or until `deadline`; the last round's answers.
pub(crate) async fn settle(
    apis: &[ApiClient],
    members: &PresenceMembers,
    deadline: Instant,
) -> Vec<PresenceCheck> {
    loop {
        let expected = members.joined();
        let mut checks = Vec::with_capacity(apis.len());
        for (node, api) in apis.iter().enumerate() {
            checks.push(check(node, api, &expected).await);
        }
        // Members that changed during the round make the round inconclusive.
        let stable = members.joined() == expected && members.all_joined();
        if (stable && checks.iter().all(PresenceCheck::converged)) || Instant::now() >= deadline {
            return checks;
        }
        tokio::time::sleep(CHECK_PAUSE).await;
    }
}

async fn check(node: usize, api: &ApiClient, expected: &BTreeSet<String>) -> PresenceCheck {
    let path = format!("/channels/{PRESENCE_CHANNEL}/users");
    let (listed, error) = match api.get(&path, &[]).await {
        Ok((200, body)) => (Some(user_ids(&body)), None),
        Ok((status, body)) => (None, Some(format!("{status} {body}"))),
        Err(e) => (None, Some(e.to_string())),
    };
    PresenceCheck {
        node,
        listed,
        expected: expected.clone(),
        error,
    }
}

fn user_ids(body: &Value) -> BTreeSet<String> {
    body["users"]
        .as_array()
        .map(|users| {
            users
                .iter()
                .filter_map(|u| u["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
