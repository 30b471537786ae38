//! Presence channels: the member list, `me`, and member added/removed bookkeeping.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;

use crate::event::Member;

/// The members of a presence channel as this client knows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceState {
    members: BTreeMap<String, Value>,
    me: Option<String>,
}

#[derive(Deserialize)]
struct SucceededData {
    presence: PresenceSnapshot,
}

#[derive(Deserialize)]
struct PresenceSnapshot {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    hash: BTreeMap<String, Value>,
}

impl PresenceState {
    /// Replace the list from `subscription_succeeded` data; `me` is the `user_id` of this
    /// client's `channel_data`.
    pub fn reset_from(&mut self, data: &Value, me: Option<String>) {
        self.members.clear();
        if let Ok(d) = serde_json::from_value::<SucceededData>(data.clone()) {
            for id in d.presence.ids {
                let info = d.presence.hash.get(&id).cloned().unwrap_or(Value::Null);
                self.members.insert(id, info);
            }
            for (id, info) in d.presence.hash {
                self.members.entry(id).or_insert(info);
            }
        }
        self.me = me;
    }

    /// Returns true when the member is new.
    pub fn add(&mut self, member: &Member) -> bool {
        self.members
            .insert(member.user_id.clone(), member.info.clone())
            .is_none()
    }

    /// Returns the removed member (with its last known info).
    pub fn remove(&mut self, user_id: &str) -> Option<Member> {
        self.members.remove(user_id).map(|info| Member {
            user_id: user_id.to_owned(),
            info,
        })
    }

    /// Every member, sorted by user id.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, info)| Member {
                user_id: id.clone(),
                info: info.clone(),
            })
            .collect()
    }

    /// How many members.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// The member `user_id`, if present.
    pub fn get(&self, user_id: &str) -> Option<Member> {
        self.members.get(user_id).map(|info| Member {
            user_id: user_id.to_owned(),
            info: info.clone(),
        })
    }

    /// This client's own member entry.
    pub fn me(&self) -> Option<Member> {
        self.me.as_deref().and_then(|id| self.get(id))
    }
}

/// Shared between the connection task (writer) and subscriptions (readers).
pub type SharedPresence = Arc<Mutex<PresenceState>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_then_changes() {
        let mut p = PresenceState::default();
        let data = serde_json::json!({"presence":{"ids":["1","2"],"hash":{"1":{"name":"a"},"2":null},"count":2}});
        p.reset_from(&data, Some("1".into()));
        assert_eq!(p.count(), 2);
        assert_eq!(
            p.me(),
            Some(Member {
                user_id: "1".into(),
                info: serde_json::json!({"name":"a"})
            })
        );
        assert!(p.add(&Member {
            user_id: "3".into(),
            info: Value::Null
        }));
        assert!(!p.add(&Member {
            user_id: "3".into(),
            info: Value::Null
        }));
        assert_eq!(p.remove("2").map(|m| m.user_id), Some("2".into()));
        assert_eq!(p.remove("2"), None);
        let ids: Vec<String> = p.members().into_iter().map(|m| m.user_id).collect();
        assert_eq!(ids, vec!["1", "3"]);
    }
}
