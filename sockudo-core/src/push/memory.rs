//! [`PushStore`] in this process's memory: the embedded default for a single node. Expired
//! statuses, send markers and dead letters are dropped when read and swept every
//! [`SWEEP_EVERY`] writes, so memory follows what is retained, not what was ever written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    DeadLetterFilter, DeadLetterRecord, DeviceRecord, PushStore, SendClaim, SendFinish,
    SendOutcome, StatusRecord, StatusUpdate, StoreResult, Subscriber,
};

/// Writes of expiring records between two sweeps of an app's expired ones.
const SWEEP_EVERY: u64 = 256;

/// Send marker of one device in one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Held(String),
    Released,
    Done,
}

#[derive(Debug, Default)]
struct Campaign {
    status: Option<(StatusRecord, Instant)>,
    once: BTreeSet<String>,
    sends: HashMap<String, Marker>,
    sends_expire: Option<Instant>,
}

#[derive(Debug, Default)]
struct AppState {
    devices: BTreeMap<String, DeviceRecord>,
    clients: HashMap<String, BTreeSet<String>>,
    channels: BTreeMap<String, BTreeSet<String>>,
    by_subscriber: HashMap<String, BTreeSet<String>>,
    campaigns: HashMap<String, Campaign>,
    dead: BTreeMap<String, (DeadLetterRecord, Instant)>,
    writes: u64,
}

impl AppState {
    fn sweep_maybe(&mut self) {
        self.writes += 1;
        if self.writes % SWEEP_EVERY != 0 {
            return;
        }
        let now = Instant::now();
        self.dead.retain(|_, (_, at)| *at > now);
        self.campaigns.retain(|_, c| {
            if c.status.as_ref().is_some_and(|(_, at)| *at <= now) {
                c.status = None;
                c.once.clear();
            }
            if c.sends_expire.is_some_and(|at| at <= now) {
                c.sends.clear();
                c.sends_expire = None;
            }
            c.status.is_some() || !c.sends.is_empty()
        });
    }

    fn unlink(&mut self, channel: &str, key: &str) -> bool {
        let Some(set) = self.channels.get_mut(channel) else {
            return false;
        };
        let removed = set.remove(key);
        if set.is_empty() {
            self.channels.remove(channel);
        }
        if let Some(chs) = self.by_subscriber.get_mut(key) {
            chs.remove(channel);
            if chs.is_empty() {
                self.by_subscriber.remove(key);
            }
        }
        removed
    }
}

/// The in-memory [`PushStore`].
#[derive(Debug, Default)]
pub struct MemoryPushStore {
    apps: Mutex<HashMap<String, AppState>>,
}

impl MemoryPushStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, app: &str, f: impl FnOnce(&mut AppState) -> T) -> StoreResult<T> {
        let mut apps = self.apps.lock();
        Ok(f(apps.entry(app.to_owned()).or_default()))
    }
}

fn after_range(after: Option<&str>) -> (Bound<&str>, Bound<&str>) {
    match after {
        Some(a) => (Bound::Excluded(a), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

fn page<'a, I: Iterator<Item = &'a String>>(it: I, limit: usize) -> Vec<String> {
    it.take(limit).cloned().collect()
}

fn live_status(c: &Campaign) -> Option<&StatusRecord> {
    c.status
        .as_ref()
        .filter(|(_, at)| *at > Instant::now())
        .map(|(s, _)| s)
}

#[async_trait]
impl PushStore for MemoryPushStore {
    async fn put_device(&self, app: &str, device: &DeviceRecord) -> StoreResult<bool> {
        self.with(app, |s| {
            let old = s.devices.insert(device.id.clone(), device.clone());
            if let Some(client) = old.as_ref().and_then(|o| o.client_id.as_ref()) {
                if let Some(set) = s.clients.get_mut(client) {
                    set.remove(&device.id);
                    if set.is_empty() {
                        s.clients.remove(client);
                    }
                }
            }
            if let Some(client) = &device.client_id {
                s.clients
                    .entry(client.clone())
                    .or_default()
                    .insert(device.id.clone());
            }
            old.is_none()
        })
    }

    async fn get_devices(
        &self,
        app: &str,
        ids: &[String],
    ) -> StoreResult<Vec<Option<DeviceRecord>>> {
        self.with(app, |s| {
            ids.iter().map(|id| s.devices.get(id).cloned()).collect()
        })
    }

    async fn list_devices(
        &self,
        app: &str,
        client: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>> {
        self.with(app, |s| match client {
            None => s
                .devices
                .range::<str, _>(after_range(after))
                .take(limit)
                .map(|(_, d)| d.clone())
                .collect(),
            Some(c) => s.clients.get(c).map_or_else(Vec::new, |ids| {
                ids.range::<str, _>(after_range(after))
                    .filter_map(|id| s.devices.get(id).cloned())
                    .take(limit)
                    .collect()
            }),
        })
    }

    async fn delete_device(&self, app: &str, id: &str) -> StoreResult<bool> {
        self.with(app, |s| {
            let Some(old) = s.devices.remove(id) else {
                return false;
            };
            if let Some(client) = &old.client_id {
                if let Some(set) = s.clients.get_mut(client) {
                    set.remove(id);
                    if set.is_empty() {
                        s.clients.remove(client);
                    }
                }
            }
            let key = Subscriber::Device(id.to_owned()).key();
            let channels: Vec<String> = s
                .by_subscriber
                .get(&key)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            for ch in channels {
                s.unlink(&ch, &key);
            }
            true
        })
    }

    async fn subscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool> {
        self.with(app, |s| {
            let key = who.key();
            s.by_subscriber
                .entry(key.clone())
                .or_default()
                .insert(channel.to_owned());
            s.channels
                .entry(channel.to_owned())
                .or_default()
                .insert(key)
        })
    }

    async fn unsubscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool> {
        self.with(app, |s| s.unlink(channel, &who.key()))
    }

    async fn channel_subscribers(
        &self,
        app: &str,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Subscriber>> {
        self.with(app, |s| {
            s.channels.get(channel).map_or_else(Vec::new, |set| {
                set.range::<str, _>(after_range(after))
                    .take(limit)
                    .filter_map(|k| Subscriber::from_key(k))
                    .collect()
            })
        })
    }

    async fn subscriber_channels(
        &self,
        app: &str,
        who: &Subscriber,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.with(app, |s| {
            s.by_subscriber
                .get(&who.key())
                .map_or_else(Vec::new, |set| {
                    page(set.range::<str, _>(after_range(after)), limit)
                })
        })
    }

    async fn channels(
        &self,
        app: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.with(app, |s| {
            page(
                s.channels
                    .range::<str, _>(after_range(after))
                    .map(|(k, _)| k),
                limit,
            )
        })
    }

    async fn create_status(
        &self,
        app: &str,
        status: &StatusRecord,
        retention: Duration,
    ) -> StoreResult<Option<StatusRecord>> {
        self.with(app, |s| {
            s.sweep_maybe();
            let c = s.campaigns.entry(status.publish_id.clone()).or_default();
            if let Some(existing) = live_status(c) {
                return Some(existing.clone());
            }
            c.once.clear();
            c.status = Some((status.clone(), Instant::now() + retention));
            None
        })
    }

    async fn get_status(&self, app: &str, publish_id: &str) -> StoreResult<Option<StatusRecord>> {
        self.with(app, |s| {
            s.campaigns.get(publish_id).and_then(live_status).cloned()
        })
    }

    async fn update_status(
        &self,
        app: &str,
        publish_id: &str,
        update: &StatusUpdate,
    ) -> StoreResult<Option<StatusRecord>> {
        self.with(app, |s| {
            let c = s.campaigns.get_mut(publish_id)?;
            live_status(c)?;
            if let Some(key) = &update.once {
                if !c.once.insert(key.clone()) {
                    return live_status(c).cloned();
                }
            }
            let (st, _) = c.status.as_mut()?;
            apply(st, update);
            Some(st.clone())
        })
    }

    async fn claim_sends(
        &self,
        app: &str,
        publish_id: &str,
        markers: &str,
        shard: &str,
        devices: &[String],
        retention: Duration,
    ) -> StoreResult<Vec<SendClaim>> {
        self.with(app, |s| {
            s.sweep_maybe();
            let c = s.campaigns.entry(markers.to_owned()).or_default();
            let expires = Instant::now() + retention;
            if c.sends_expire.is_none_or(|at| at < expires) {
                c.sends_expire = Some(expires);
            }
            let claims: Vec<SendClaim> = devices
                .iter()
                .map(|d| match c.sends.get(d) {
                    None => {
                        c.sends.insert(d.clone(), Marker::Held(shard.to_owned()));
                        SendClaim::Fresh { first: true }
                    }
                    Some(Marker::Released) => {
                        c.sends.insert(d.clone(), Marker::Held(shard.to_owned()));
                        SendClaim::Fresh { first: false }
                    }
                    Some(Marker::Held(by)) if by == shard => SendClaim::Resumed,
                    Some(_) => SendClaim::Taken,
                })
                .collect();
            let firsts = claims
                .iter()
                .filter(|c| **c == SendClaim::Fresh { first: true })
                .count();
            if let Some((st, _)) = s
                .campaigns
                .get_mut(publish_id)
                .and_then(|c| c.status.as_mut())
            {
                st.counters.planned += i64::try_from(firsts).unwrap_or(i64::MAX);
            }
            claims
        })
    }

    async fn finish_sends(
        &self,
        app: &str,
        publish_id: &str,
        markers: &str,
        shard: &str,
        results: &[SendFinish],
    ) -> StoreResult<Vec<bool>> {
        self.with(app, |s| {
            let Some(c) = s.campaigns.get_mut(markers) else {
                return vec![false; results.len()];
            };
            let changed: Vec<bool> = results
                .iter()
                .map(|r| match c.sends.get_mut(&r.device) {
                    Some(m) if *m == Marker::Held(shard.to_owned()) => {
                        *m = match r.outcome {
                            SendOutcome::Done => Marker::Done,
                            SendOutcome::Release => Marker::Released,
                        };
                        true
                    }
                    _ => false,
                })
                .collect();
            if let Some((st, _)) = s
                .campaigns
                .get_mut(publish_id)
                .and_then(|c| c.status.as_mut())
            {
                for (r, _) in results.iter().zip(&changed).filter(|(_, ch)| **ch) {
                    if let Some(name) = r.counter {
                        st.counters.add(name, 1);
                    }
                }
            }
            changed
        })
    }

    async fn add_dead_letter(
        &self,
        app: &str,
        letter: &DeadLetterRecord,
        retention: Duration,
    ) -> StoreResult<()> {
        self.with(app, |s| {
            s.sweep_maybe();
            s.dead.insert(
                letter.id.clone(),
                (letter.clone(), Instant::now() + retention),
            );
        })
    }

    async fn list_dead_letters(
        &self,
        app: &str,
        filter: &DeadLetterFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetterRecord>> {
        let now = Instant::now();
        self.with(app, |s| {
            s.dead
                .range::<str, _>(after_range(after))
                .map(|(_, (l, at))| (l, at))
                .filter(|(l, at)| **at > now && matches(filter, l))
                .take(limit)
                .map(|(l, _)| l.clone())
                .collect()
        })
    }

    async fn take_dead_letter(&self, app: &str, id: &str) -> StoreResult<Option<DeadLetterRecord>> {
        let now = Instant::now();
        self.with(app, |s| {
            s.dead
                .remove(id)
                .filter(|(_, at)| *at > now)
                .map(|(l, _)| l)
        })
    }
}

/// Whether `l` passes `filter`.
pub(super) fn matches(filter: &DeadLetterFilter, l: &DeadLetterRecord) -> bool {
    filter.provider.as_ref().is_none_or(|p| *p == l.provider)
        && filter.since_ms.is_none_or(|t| l.occurred_at_ms >= t)
        && filter.until_ms.is_none_or(|t| l.occurred_at_ms < t)
}

/// Apply `u` to `st` (shared by the implementations that hold records in memory).
pub(super) fn apply(st: &mut StatusRecord, u: &StatusUpdate) {
    for (name, v) in u.counters.fields() {
        st.counters.add(name, v);
    }
    st.pending_shards += u.pending_shards;
    if let Some(done) = u.planning_done {
        st.planning_done = done;
    }
    if let Some(state) = u.state {
        if u.reopen || !st.state.is_terminal() {
            st.state = state;
        }
    }
    if let Some(reason) = &u.error_reason {
        st.error_reason = Some(reason.clone());
    }
    st.updated_at_ms = st.updated_at_ms.max(u.now_ms);
}
