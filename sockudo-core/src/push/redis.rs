//! [`PushStore`] on Redis or a Redis Cluster (feature `redis`): shared by every node.
//!
//! # Layout
//! With `P` the prefix and `A` the app id, every key of an app shares the hash tag `{A}`
//! (one Redis Cluster slot per app, so each script is atomic):
//! - `P{A}:dev` hash id → body, `P{A}:dev:client` hash id → client, `P{A}:devs` sorted set
//!   of ids (lexical order, score 0), `P{A}:cli:C` ids of client `C`;
//! - `P{A}:chan:CH` subscriber keys of channel `CH`, `P{A}:subs:K` channels of subscriber
//!   key `K`, `P{A}:chans` channels with subscribers;
//! - `P{A}:st:ID` status hash (expires with the retention), `P{A}:once:ID` applied once-keys,
//!   `P{A}:snd:ID` send markers (`h:SHARD` held, `r` released, `d` done);
//! - `P{A}:dl` dead-letter ids, `P{A}:dl:p:PROVIDER` per provider, `P{A}:dlb` records
//!   (`expires|provider|occurred|body`); expired ones are dropped on the next add and never
//!   listed.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::redis_scripts as lua;
use super::{
    Counters, DeadLetterFilter, DeadLetterRecord, DeviceRecord, PublishState, PushStore,
    PushStoreError, SendClaim, SendFinish, SendOutcome, StatusRecord, StatusUpdate, StoreResult,
    Subscriber,
};
use crate::redis_conn::{RedisConn, RedisEndpoint};

/// Every operation's upper bound, reconnection included.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

struct Scripts {
    put_device: Script,
    delete_device: Script,
    subscribe: Script,
    unsubscribe: Script,
    create_status: Script,
    update_status: Script,
    claim_sends: Script,
    finish_sends: Script,
    add_dead_letter: Script,
    take_dead_letter: Script,
}

/// The Redis-backed [`PushStore`]. Cheap to share through `Arc`.
pub struct RedisPushStore {
    conn: RedisConn,
    prefix: String,
    scripts: Scripts,
}

impl fmt::Debug for RedisPushStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPushStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl fmt::Display) -> PushStoreError {
    PushStoreError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// ZRANGEBYLEX lower bound strictly after `after`.
fn lex_after(after: Option<&str>) -> String {
    after.map_or_else(|| "-".to_owned(), |a| format!("({a}"))
}

impl RedisPushStore {
    /// Connect to `endpoint`; keys start with `prefix` (e.g. `sockudo:push:`). Fails when
    /// Redis does not answer a `PING`.
    pub async fn connect(
        endpoint: impl Into<RedisEndpoint>,
        prefix: &str,
    ) -> StoreResult<RedisPushStore> {
        let conn = crate::redis_conn::connect(&endpoint.into(), OP_TIMEOUT, OP_TIMEOUT)
            .await
            .map_err(PushStoreError::Unavailable)?;
        Ok(RedisPushStore {
            conn,
            prefix: prefix.to_owned(),
            scripts: Scripts {
                put_device: Script::new(lua::PUT_DEVICE),
                delete_device: Script::new(lua::DELETE_DEVICE),
                subscribe: Script::new(lua::SUBSCRIBE),
                unsubscribe: Script::new(lua::UNSUBSCRIBE),
                create_status: Script::new(lua::CREATE_STATUS),
                update_status: Script::new(lua::UPDATE_STATUS),
                claim_sends: Script::new(lua::CLAIM_SENDS),
                finish_sends: Script::new(lua::FINISH_SENDS),
                add_dead_letter: Script::new(lua::ADD_DEAD_LETTER),
                take_dead_letter: Script::new(lua::TAKE_DEAD_LETTER),
            },
        })
    }

    fn key(&self, app: &str, part: &str) -> String {
        format!("{}{{{app}}}:{part}", self.prefix)
    }

    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(PushStoreError::Unavailable("push store timed out".into())),
        }
    }

    async fn zpage(
        &self,
        key: String,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut c = self.conn.clone();
        let limit = isize::try_from(limit).unwrap_or(isize::MAX);
        self.run(c.zrangebylex_limit(key, lex_after(after), "+", 0, limit))
            .await
    }
}

fn status_fields(s: &StatusRecord) -> Vec<(String, String)> {
    let mut v = vec![
        ("pid".to_owned(), s.publish_id.clone()),
        ("campaign".into(), s.campaign.clone()),
        ("body".into(), s.body.clone()),
        ("state".into(), s.state.as_str().into()),
        ("pending".into(), s.pending_shards.to_string()),
        (
            "pdone".into(),
            if s.planning_done { "1" } else { "0" }.into(),
        ),
        ("created".into(), s.created_at_ms.to_string()),
        ("updated".into(), s.updated_at_ms.to_string()),
    ];
    if let Some(e) = &s.error_reason {
        v.push(("err".into(), e.clone()));
    }
    for (name, value) in s.counters.fields() {
        v.push((format!("c:{name}"), value.to_string()));
    }
    v
}

fn parse_status(flat: Vec<String>) -> StoreResult<Option<StatusRecord>> {
    if flat.is_empty() {
        return Ok(None);
    }
    let mut m: HashMap<String, String> = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    let bad = || PushStoreError::Unavailable("malformed push status in redis".into());
    let num = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let mut counters = Counters::default();
    for (k, v) in &m {
        if let Some(name) = k.strip_prefix("c:") {
            counters.add(name, v.parse().unwrap_or(0));
        }
    }
    Ok(Some(StatusRecord {
        publish_id: m.get("pid").cloned().ok_or_else(bad)?,
        campaign: m.get("campaign").cloned().ok_or_else(bad)?,
        body: m.get("body").cloned().unwrap_or_default(),
        state: m
            .get("state")
            .and_then(|s| PublishState::parse(s))
            .ok_or_else(bad)?,
        counters,
        pending_shards: num("pending"),
        planning_done: m.get("pdone").is_some_and(|v| v == "1"),
        error_reason: m.get("err").cloned(),
        created_at_ms: u64::try_from(num("created")).unwrap_or(0),
        updated_at_ms: u64::try_from(num("updated")).unwrap_or(0),
    }))
}

/// `expires|provider|occurred|body` → the record, unless expired.
fn parse_letter(id: &str, rec: &str, now: u64) -> Option<DeadLetterRecord> {
    let mut parts = rec.splitn(4, '|');
    let expires: u64 = parts.next()?.parse().ok()?;
    let provider = parts.next()?.to_owned();
    let occurred_at_ms = parts.next()?.parse().ok()?;
    let body = parts.next()?.to_owned();
    (expires > now).then(|| DeadLetterRecord {
        id: id.to_owned(),
        provider,
        occurred_at_ms,
        body,
    })
}

#[async_trait]
impl PushStore for RedisPushStore {
    async fn put_device(&self, app: &str, device: &DeviceRecord) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let keys = [
            self.key(app, "dev"),
            self.key(app, "devs"),
            self.key(app, "cli:"),
        ];
        let mut inv = self.scripts.put_device.key(&keys[..]);
        inv.arg(&device.id)
            .arg(device.client_id.as_deref().unwrap_or(""))
            .arg(&device.body);
        let n: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
    }

    async fn get_devices(
        &self,
        app: &str,
        ids: &[String],
    ) -> StoreResult<Vec<Option<DeviceRecord>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(self.key(app, "dev")).arg(ids);
        pipe.cmd("HMGET").arg(self.key(app, "dev:client")).arg(ids);
        let (bodies, clients): (Vec<Option<String>>, Vec<Option<String>>) =
            self.run(pipe.query_async(&mut c)).await?;
        Ok(ids
            .iter()
            .zip(bodies.into_iter().zip(clients))
            .map(|(id, (body, client_id))| {
                body.map(|body| DeviceRecord {
                    id: id.clone(),
                    client_id,
                    body,
                })
            })
            .collect())
    }

    async fn list_devices(
        &self,
        app: &str,
        client: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let index = match client {
            Some(cl) => self.key(app, &format!("cli:{cl}")),
            None => self.key(app, "devs"),
        };
        let ids = self.zpage(index, after, limit).await?;
        Ok(self
            .get_devices(app, &ids)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn delete_device(&self, app: &str, id: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let who = Subscriber::Device(id.to_owned()).key();
        let keys = [
            self.key(app, "dev"),
            self.key(app, "devs"),
            self.key(app, "cli:"),
            self.key(app, &format!("subs:{who}")),
            self.key(app, "chan:"),
            self.key(app, "chans"),
        ];
        let mut inv = self.scripts.delete_device.key(&keys[..]);
        inv.arg(id).arg(&who);
        let n: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
    }

    async fn subscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool> {
        self.sub_script(&self.scripts.subscribe, app, channel, who)
            .await
    }

    async fn unsubscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool> {
        self.sub_script(&self.scripts.unsubscribe, app, channel, who)
            .await
    }

    async fn channel_subscribers(
        &self,
        app: &str,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Subscriber>> {
        let keys = self
            .zpage(self.key(app, &format!("chan:{channel}")), after, limit)
            .await?;
        Ok(keys
            .iter()
            .filter_map(|k| Subscriber::from_key(k))
            .collect())
    }

    async fn subscriber_channels(
        &self,
        app: &str,
        who: &Subscriber,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.zpage(self.key(app, &format!("subs:{}", who.key())), after, limit)
            .await
    }

    async fn channels(
        &self,
        app: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.zpage(self.key(app, "chans"), after, limit).await
    }

    async fn create_status(
        &self,
        app: &str,
        status: &StatusRecord,
        retention: Duration,
    ) -> StoreResult<Option<StatusRecord>> {
        let mut c = self.conn.clone();
        let mut inv = self
            .scripts
            .create_status
            .key(self.key(app, &format!("st:{}", status.publish_id)));
        inv.arg(ms(retention));
        for (k, v) in status_fields(status) {
            inv.arg(k).arg(v);
        }
        let flat: Vec<String> = self.run(inv.invoke_async(&mut c)).await?;
        parse_status(flat)
    }

    async fn get_status(&self, app: &str, publish_id: &str) -> StoreResult<Option<StatusRecord>> {
        let mut c = self.conn.clone();
        let flat: Vec<String> = self
            .run(c.hgetall(self.key(app, &format!("st:{publish_id}"))))
            .await?;
        parse_status(flat)
    }

    async fn update_status(
        &self,
        app: &str,
        publish_id: &str,
        u: &StatusUpdate,
    ) -> StoreResult<Option<StatusRecord>> {
        let mut c = self.conn.clone();
        let keys = [
            self.key(app, &format!("st:{publish_id}")),
            self.key(app, &format!("once:{publish_id}")),
        ];
        let mut inv = self.scripts.update_status.key(&keys[..]);
        inv.arg(u.once.as_deref().unwrap_or(""))
            .arg(u.pending_shards)
            .arg(u.planning_done.map_or("", |d| if d { "1" } else { "0" }))
            .arg(u.state.map_or("", PublishState::as_str))
            .arg(if u.reopen { "1" } else { "0" })
            .arg(u.error_reason.as_deref().unwrap_or("\0none"))
            .arg(u.now_ms);
        for (name, v) in u.counters.fields() {
            if v != 0 {
                inv.arg(name).arg(v);
            }
        }
        let flat: Vec<String> = self.run(inv.invoke_async(&mut c)).await?;
        parse_status(flat)
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
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let keys = [
            self.key(app, &format!("snd:{markers}")),
            self.key(app, &format!("st:{publish_id}")),
        ];
        let mut inv = self.scripts.claim_sends.key(&keys[..]);
        inv.arg(shard).arg(ms(retention)).arg(devices);
        let codes: Vec<i64> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(codes
            .into_iter()
            .map(|code| match code {
                0 => SendClaim::Fresh { first: true },
                1 => SendClaim::Fresh { first: false },
                2 => SendClaim::Resumed,
                _ => SendClaim::Taken,
            })
            .collect())
    }

    async fn finish_sends(
        &self,
        app: &str,
        publish_id: &str,
        markers: &str,
        shard: &str,
        results: &[SendFinish],
    ) -> StoreResult<Vec<bool>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let keys = [
            self.key(app, &format!("snd:{markers}")),
            self.key(app, &format!("st:{publish_id}")),
        ];
        let mut inv = self.scripts.finish_sends.key(&keys[..]);
        inv.arg(shard);
        for r in results {
            inv.arg(&r.device)
                .arg(match r.outcome {
                    SendOutcome::Done => "d",
                    SendOutcome::Release => "r",
                })
                .arg(r.counter.unwrap_or(""));
        }
        let changed: Vec<i64> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(changed.into_iter().map(|n| n == 1).collect())
    }

    async fn add_dead_letter(
        &self,
        app: &str,
        letter: &DeadLetterRecord,
        retention: Duration,
    ) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let now = now_ms();
        let keys = [
            self.key(app, "dl"),
            self.key(app, "dl:p:"),
            self.key(app, "dlb"),
        ];
        let record = format!(
            "{}|{}|{}|{}",
            now.saturating_add(ms(retention)),
            letter.provider,
            letter.occurred_at_ms,
            letter.body
        );
        let mut inv = self.scripts.add_dead_letter.key(&keys[..]);
        inv.arg(&letter.id)
            .arg(&letter.provider)
            .arg(record)
            .arg(now);
        let _: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        app: &str,
        filter: &DeadLetterFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetterRecord>> {
        let index = match &filter.provider {
            Some(p) => self.key(app, &format!("dl:p:{p}")),
            None => self.key(app, "dl"),
        };
        let now = now_ms();
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_owned);
        if let Some(since) = filter.since_ms {
            // Ids start with the time: jump to it (just before, as a strict lower bound).
            let start = format!("{since:013}");
            if cursor.as_deref().is_none_or(|c| c < start.as_str()) {
                cursor = Some(format!("{:013}", since.saturating_sub(1)) + "~");
            }
        }
        // Expired or filtered entries are skipped: read on until the page is full.
        while out.len() < limit {
            let ids = self.zpage(index.clone(), cursor.as_deref(), limit).await?;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            let mut c = self.conn.clone();
            let recs: Vec<Option<String>> = self
                .run(
                    redis::cmd("HMGET")
                        .arg(self.key(app, "dlb"))
                        .arg(&ids)
                        .query_async(&mut c),
                )
                .await?;
            for (id, rec) in ids.iter().zip(recs) {
                let Some(l) = rec.and_then(|r| parse_letter(id, &r, now)) else {
                    continue;
                };
                if filter.until_ms.is_some_and(|t| l.occurred_at_ms >= t) {
                    return Ok(out);
                }
                if super::memory::matches(filter, &l) && out.len() < limit {
                    out.push(l);
                }
            }
            cursor = Some(last);
        }
        Ok(out)
    }

    async fn take_dead_letter(&self, app: &str, id: &str) -> StoreResult<Option<DeadLetterRecord>> {
        let mut c = self.conn.clone();
        let keys = [
            self.key(app, "dl"),
            self.key(app, "dl:p:"),
            self.key(app, "dlb"),
        ];
        let mut inv = self.scripts.take_dead_letter.key(&keys[..]);
        inv.arg(id);
        let rec: Option<String> = self.run(inv.invoke_async(&mut c)).await?;
        Ok(rec.and_then(|r| parse_letter(id, &r, now_ms())))
    }
}

impl RedisPushStore {
    async fn sub_script(
        &self,
        script: &Script,
        app: &str,
        channel: &str,
        who: &Subscriber,
    ) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let key = who.key();
        let keys = [
            self.key(app, &format!("chan:{channel}")),
            self.key(app, &format!("subs:{key}")),
            self.key(app, "chans"),
        ];
        let mut inv = script.key(&keys[..]);
        inv.arg(channel).arg(&key);
        let n: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
    }
}
