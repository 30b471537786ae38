//! [`PresenceStore`] in Redis or Redis Cluster (feature `redis`): every change to a channel is
//! one Lua script on that channel's hash slot, hence atomic.
//!
//! # Keys (prefix `P`, default `sockudo`; `B` = `P:presence:{app:channel}`)
//! | key | type | content |
//! |---|---|---|
//! | `B:users` | hash | user → number of nodes holding it |
//! | `B:info` | hash | user → `user_info` JSON (set by the first join) |
//! | `B:node:{node}` | set | the users `node` holds in the channel |
//! | `B:seq` | string | the channel's presence sequence number |
//! | `P:presence_node:{node}` | set | `app \0 channel` for every channel `node` holds users in |
//! | `P:presence_nodes` | set | nodes that contributed since their last sweep |
//!
//! Every key of one channel carries the Redis Cluster hash tag `{app:channel}`, so the
//! scripts, which touch only one channel's keys, run on one slot; the same layout serves a
//! single server. The node index and `presence_nodes` live elsewhere and are written with
//! plain commands around the scripts (see *Index* below). `presence_nodes` lets survivors
//! find nodes that died while no peer watched them ([`PresenceStore::nodes`]).
//!
//! Redis deletes empty hashes and sets by itself, so nothing is left behind when the last
//! member of a channel leaves or a node is swept. The `seq` key cannot go with them (the
//! sequence must not restart when a channel empties, see [`PresenceStore`]), so it expires
//! [`SEQ_TTL_SECS`] after its last use instead, and a missing key starts from the server's
//! clock in microseconds: a restarted sequence still begins above every number the expired
//! one handed out, as long as a channel averages fewer than a million membership changes a
//! second.
//!
//! Injectivity: Pusher channel names cannot contain `:`, `{`, `}` or NUL and node ids are
//! refused when they contain NUL, so the keys and set members above never collide.
//!
//! # Semantics
//! - `join`: refuses a new user when the channel has `max_members` users; otherwise adds the
//!   user to the node's set once, increments the user's node count on a new pair, and
//!   reports `first` when the count went from 0 to 1. Returns the members after the join.
//! - `leave`: removes the pair once; reports the removal when the count reaches 0.
//! - A `first` join and every removal (leave or sweep) take the channel's next `seq` in the
//!   same script.
//! - `sweep_node`: for every channel of the node's index, one script removes every user the
//!   node holds there and reports those whose count reached 0. Scripts of one channel run one
//!   at a time, so of several concurrent sweeps of one node the first empties the node's set
//!   and the others find it empty: each removal is reported exactly once.
//!
//! # Index
//! The node index must list every channel where the node holds a user, or a sweep would
//! miss members. `join` adds the channel to it *before* its script (a crash in between
//! leaves an entry the sweep finds empty, which is harmless) and again after it when it
//! added a pair; `leave` drops the entry once the node holds nobody in the channel, then
//! re-checks the channel's node set and puts the entry back when a concurrent join added
//! someone. Either that re-check sees the join's user or the join's second `SADD` lands after
//! the removal, so no interleaving loses an entry. The index is therefore bounded by the
//! channels where the node currently has presence.
//!
//! # Limitations
//! - The scripts read `TIME` before writing (seeding a channel's `seq`), which Redis allows
//!   with effects replication, the default since Redis 5; older servers refuse it.
//! - A join costs three round trips (index, script, index) and a leave one, or three when it
//!   was the node's last user in the channel. A sweep costs one script per channel of the
//!   node, 16 at a time.
//! - On Redis Cluster a primary failover loses writes the old primary acknowledged but had
//!   not replicated (Redis replication is asynchronous): a member may reappear or vanish.
//!   The cluster adapter's periodic orphan sweep and node restarts repair what a node no
//!   longer holds; a vanished member comes back with its next connection.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::Script;

use crate::redis_conn::{RedisConn, RedisEndpoint};

use super::{
    AdapterError, PresenceJoin, PresenceJoinOutcome, PresenceLeave, PresenceMember,
    PresenceSnapshot, PresenceStore, RemovedMember,
};

/// How long a channel's `seq` key outlives its last use (see the module docs).
const SEQ_TTL_SECS: u64 = 7 * 24 * 3600;

/// `next_seq(key, ttl)`: the channel's next presence sequence number. A missing key is
/// seeded from `TIME` (seconds and zero-padded microseconds concatenated as text, since Lua
/// would print a 16-digit number in exponent form, which `INCR` refuses).
const NEXT_SEQ: &str = r"
local function next_seq(key, ttl)
  if redis.call('EXISTS', key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', key, t[1] .. string.rep('0', 6 - #t[2]) .. t[2])
  end
  local seq = redis.call('INCR', key)
  redis.call('EXPIRE', key, ttl)
  return seq
end
";

/// KEYS: users, info, node set, seq. ARGV: user, has_info ('1'/'0'), info, max_members, seq
/// ttl. Returns {first, full, added, users, flat info hash, seq, the channel's sequence now}.
/// (No `HMGET … unpack(users)`: Lua's `unpack` fails beyond a few thousand values.)
const JOIN_SCRIPT: &str = r"
local user = ARGV[1]
local first, full, added, seq = 0, 0, 0, 0
if redis.call('HEXISTS', KEYS[1], user) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  full = 1
elseif redis.call('SADD', KEYS[3], user) == 1 then
  added = 1
  if redis.call('HINCRBY', KEYS[1], user, 1) == 1 then
    first = 1
    seq = next_seq(KEYS[4], ARGV[5])
    if ARGV[2] == '1' then
      redis.call('HSET', KEYS[2], user, ARGV[3])
    else
      redis.call('HDEL', KEYS[2], user)
    end
  end
end
return {first, full, added, redis.call('HKEYS', KEYS[1]), redis.call('HGETALL', KEYS[2]), seq, tonumber(redis.call('GET', KEYS[4]) or '0')}
";

/// KEYS: users, info, node set, seq. ARGV: user, seq ttl. Returns {the removal's seq when the
/// user left the channel (0 otherwise), users this node still holds in the channel}.
const LEAVE_SCRIPT: &str = r"
local user = ARGV[1]
local seq = 0
if redis.call('SREM', KEYS[3], user) == 1 then
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    redis.call('HDEL', KEYS[2], user)
    seq = next_seq(KEYS[4], ARGV[2])
  end
end
return {seq, redis.call('SCARD', KEYS[3])}
";

/// KEYS: users, info, seq. Returns {users, flat info hash, seq}, one consistent snapshot
/// with the sequence number of the last change it reflects.
const MEMBERS_SCRIPT: &str = r"
return {redis.call('HKEYS', KEYS[1]), redis.call('HGETALL', KEYS[2]), tonumber(redis.call('GET', KEYS[3]) or '0')}
";

/// KEYS: users, info, node set, seq. ARGV: seq ttl. Removes every user the node holds in
/// the channel; returns a flat list user, seq, … of those whose last node this was.
const SWEEP_CHANNEL_SCRIPT: &str = r"
local removed = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    redis.call('HDEL', KEYS[2], user)
    removed[#removed + 1] = user
    removed[#removed + 1] = next_seq(KEYS[4], ARGV[1])
  end
end
redis.call('DEL', KEYS[3])
return removed
";

/// Settings of a [`RedisPresenceStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisPresenceOptions {
    /// Key prefix (default `sockudo`); see the module docs for the layout.
    pub prefix: String,
    /// Upper bound of every operation, including a wait for a reconnection (default 1 s).
    pub operation_timeout: Duration,
    /// Upper bound of connecting and the first `PING` (default 2 s).
    pub connect_timeout: Duration,
}

impl Default for RedisPresenceOptions {
    fn default() -> Self {
        RedisPresenceOptions {
            prefix: "sockudo".to_owned(),
            operation_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Redis-backed [`PresenceStore`] (one server or a Redis Cluster); see the module docs.
/// Cheap to clone.
#[derive(Clone)]
pub struct RedisPresenceStore {
    conn: RedisConn,
    opts: RedisPresenceOptions,
    join: Script,
    leave: Script,
    members: Script,
    sweep: Script,
}

impl fmt::Debug for RedisPresenceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPresenceStore")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("redis presence {what}: {e}"))
}

fn check_node(node: &str) -> Result<(), AdapterError> {
    if node.contains('\0') {
        return Err(AdapterError::Malformed("node id contains NUL".into()));
    }
    Ok(())
}

/// Pair the users with the flat `HGETALL` of the info hash.
fn to_members(users: Vec<String>, info_flat: Vec<String>) -> Vec<PresenceMember> {
    let mut infos: HashMap<String, String> = HashMap::with_capacity(info_flat.len() / 2);
    let mut it = info_flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        infos.insert(k, v);
    }
    let mut members: Vec<PresenceMember> = users
        .into_iter()
        .map(|user_id| PresenceMember {
            info: infos.remove(&user_id),
            user_id,
        })
        .collect();
    members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    members
}

/// The four keys of one channel as one node sees them (all in one hash slot).
struct ChannelKeys {
    users: String,
    info: String,
    node_set: String,
    seq: String,
}

/// How many channel sweeps of one node run at once.
const SWEEP_CONCURRENCY: usize = 16;

impl RedisPresenceStore {
    /// Connect with the default options (prefix `sockudo`).
    pub async fn connect(endpoint: impl Into<RedisEndpoint>) -> Result<Self, AdapterError> {
        Self::connect_with(endpoint, RedisPresenceOptions::default()).await
    }

    /// Connect with explicit options. Fails when Redis does not answer a `PING` in time.
    pub async fn connect_with(
        endpoint: impl Into<RedisEndpoint>,
        opts: RedisPresenceOptions,
    ) -> Result<Self, AdapterError> {
        let conn = crate::redis_conn::connect(
            &endpoint.into(),
            opts.operation_timeout,
            opts.connect_timeout,
        )
        .await
        .map_err(|e| unavailable("connect", e))?;
        Ok(RedisPresenceStore {
            conn,
            opts,
            join: Script::new(&format!("{NEXT_SEQ}{JOIN_SCRIPT}")),
            leave: Script::new(&format!("{NEXT_SEQ}{LEAVE_SCRIPT}")),
            members: Script::new(MEMBERS_SCRIPT),
            sweep: Script::new(&format!("{NEXT_SEQ}{SWEEP_CHANNEL_SCRIPT}")),
        })
    }

    fn channel_keys(&self, app: &str, channel: &str, node: &str) -> ChannelKeys {
        let base = format!("{}:presence:{{{app}:{channel}}}", self.opts.prefix);
        ChannelKeys {
            users: format!("{base}:users"),
            info: format!("{base}:info"),
            node_set: format!("{base}:node:{node}"),
            seq: format!("{base}:seq"),
        }
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:presence_node:{{{node}}}", self.opts.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:presence_nodes", self.opts.prefix)
    }

    /// Run one command or script invocation under the operation timeout.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, AdapterError> {
        match tokio::time::timeout(self.opts.operation_timeout, fut).await {
            Ok(r) => r.map_err(|e| unavailable(what, e)),
            Err(_) => Err(unavailable(
                what,
                format!(
                    "timed out after {} ms",
                    self.opts.operation_timeout.as_millis()
                ),
            )),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, AdapterError> {
        let mut c = self.conn.clone();
        self.timed(what, inv.invoke_async::<T>(&mut c)).await
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, AdapterError> {
        let mut c = self.conn.clone();
        self.timed(what, cmd.query_async::<T>(&mut c)).await
    }

    /// Record in the node's index that it holds users in the channel.
    async fn index_add(&self, node: &str, entry: &[u8]) -> Result<(), AdapterError> {
        let add = redis::cmd("SADD")
            .arg(self.node_key(node))
            .arg(entry)
            .to_owned();
        let listed = redis::cmd("SADD")
            .arg(self.nodes_key())
            .arg(node)
            .to_owned();
        let (a, b) = futures_util::join!(
            self.query::<i64>("index", &add),
            self.query::<i64>("index", &listed)
        );
        a.and(b).map(|_| ())
    }

    /// Drop the channel from the node's index once the node holds nobody there. The entry is
    /// removed first and put back when the channel's node set turned out non-empty: a join
    /// racing with this adds its own entry after its script, so either this check sees the
    /// join's user or the join's second `SADD` lands after the removal.
    async fn index_forget(&self, node: &str, keys: &ChannelKeys, entry: &[u8]) {
        let rem = redis::cmd("SREM")
            .arg(self.node_key(node))
            .arg(entry)
            .to_owned();
        let card = redis::cmd("SCARD").arg(&keys.node_set).to_owned();
        let outcome = async {
            self.query::<i64>("index", &rem).await?;
            if self.query::<i64>("index", &card).await? > 0 {
                self.index_add(node, entry).await?;
            }
            Ok::<_, AdapterError>(())
        };
        if let Err(e) = outcome.await {
            // A stale entry only costs the sweep one empty channel script.
            tracing::debug!(node, error = %e, "presence index clean-up failed");
        }
    }

    /// Sweep one channel of the node's index: the members whose last node it was.
    async fn sweep_channel(
        &self,
        node: &str,
        entry: &[u8],
    ) -> Result<Vec<RemovedMember>, AdapterError> {
        let Some((app, channel)) = parse_entry(entry) else {
            return Ok(Vec::new());
        };
        let k = self.channel_keys(&app, &channel, node);
        let mut inv = self.sweep.prepare_invoke();
        inv.key(&k.users).key(&k.info).key(&k.node_set).key(&k.seq);
        inv.arg(SEQ_TTL_SECS);
        let flat: Vec<(String, u64)> = self.run("sweep", &inv).await?;
        Ok(flat
            .into_iter()
            .map(|(user_id, seq)| RemovedMember {
                app_id: app.clone(),
                channel: channel.clone(),
                user_id,
                seq,
            })
            .collect())
    }
}

/// `app \0 channel`: one entry of a node's index.
fn index_entry(app: &str, channel: &str) -> Vec<u8> {
    let mut e = Vec::with_capacity(app.len() + channel.len() + 1);
    e.extend_from_slice(app.as_bytes());
    e.push(0);
    e.extend_from_slice(channel.as_bytes());
    e
}

fn parse_entry(entry: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(entry).ok()?;
    let (app, channel) = text.split_once('\0')?;
    Some((app.to_owned(), channel.to_owned()))
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn join(
        &self,
        node_id: &str,
        j: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        check_node(node_id)?;
        let k = self.channel_keys(j.app_id, j.channel, node_id);
        let entry = index_entry(j.app_id, j.channel);
        // Indexed before the pair exists: a crash after this leaves an entry the sweep finds
        // empty, never a pair the sweep cannot find.
        self.index_add(node_id, &entry).await?;
        let mut inv = self.join.prepare_invoke();
        inv.key(&k.users).key(&k.info).key(&k.node_set).key(&k.seq);
        inv.arg(j.user_id)
            .arg(if j.info.is_some() { "1" } else { "0" })
            .arg(j.info.unwrap_or_default())
            .arg(j.max_members)
            .arg(SEQ_TTL_SECS);
        type Reply = (i64, i64, i64, Vec<String>, Vec<String>, u64, u64);
        let (first, full, added, users, infos, seq, snapshot_seq): Reply =
            self.run("join", &inv).await?;
        if added == 1 {
            // See `index_forget`: a concurrent clean-up may have removed the entry.
            self.index_add(node_id, &entry).await?;
        } else if full == 1 {
            self.index_forget(node_id, &k, &entry).await;
        }
        Ok(PresenceJoinOutcome {
            first: first == 1,
            full: full == 1,
            members: to_members(users, infos),
            seq,
            snapshot_seq,
        })
    }

    async fn leave(
        &self,
        node_id: &str,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError> {
        check_node(node_id)?;
        let k = self.channel_keys(app_id, channel, node_id);
        let mut inv = self.leave.prepare_invoke();
        inv.key(&k.users).key(&k.info).key(&k.node_set).key(&k.seq);
        inv.arg(user_id).arg(SEQ_TTL_SECS);
        let (seq, remaining): (u64, i64) = self.run("leave", &inv).await?;
        if remaining == 0 {
            self.index_forget(node_id, &k, &index_entry(app_id, channel))
                .await;
        }
        Ok(PresenceLeave {
            gone: seq != 0,
            seq,
        })
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<PresenceSnapshot, AdapterError> {
        let k = self.channel_keys(app_id, channel, "");
        let mut inv = self.members.prepare_invoke();
        inv.key(&k.users).key(&k.info).key(&k.seq);
        let (users, infos, seq): (Vec<String>, Vec<String>, u64) =
            self.run("members", &inv).await?;
        Ok(PresenceSnapshot {
            members: to_members(users, infos),
            seq,
        })
    }

    async fn sweep_node(&self, node_id: &str) -> Result<Vec<RemovedMember>, AdapterError> {
        check_node(node_id)?;
        let index = self.node_key(node_id);
        let entries: Vec<Vec<u8>> = self
            .query("sweep", redis::cmd("SMEMBERS").arg(&index))
            .await?;
        let swept: Vec<Result<Vec<RemovedMember>, AdapterError>> =
            futures_util::stream::iter(entries.clone())
                .map(|e| async move { self.sweep_channel(node_id, &e).await })
                .buffer_unordered(SWEEP_CONCURRENCY)
                .collect()
                .await;
        let mut removed = Vec::new();
        for r in swept {
            removed.extend(r?);
        }
        if !entries.is_empty() {
            let _: i64 = self
                .query("sweep", redis::cmd("SREM").arg(&index).arg(&entries))
                .await?;
        }
        let left: i64 = self.query("sweep", redis::cmd("SCARD").arg(&index)).await?;
        if left == 0 {
            let _: i64 = self
                .query(
                    "sweep",
                    redis::cmd("SREM").arg(self.nodes_key()).arg(node_id),
                )
                .await?;
        }
        Ok(removed)
    }

    async fn nodes(&self) -> Result<Vec<String>, AdapterError> {
        self.query("nodes", redis::cmd("SMEMBERS").arg(self.nodes_key()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_nul_separated_and_parse_back() {
        let e = index_entry("a:b", "presence-x");
        assert_eq!(e, b"a:b\0presence-x".to_vec());
        assert_eq!(parse_entry(&e), Some(("a:b".into(), "presence-x".into())));
        assert_eq!(parse_entry(b"no-separator"), None);
        assert_eq!(parse_entry(&[0xff, 0, b'x']), None);
    }

    #[test]
    fn members_pair_users_with_infos_sorted() {
        let m = to_members(vec!["b".into(), "a".into()], vec!["a".into(), "{}".into()]);
        assert_eq!(
            m,
            vec![
                PresenceMember {
                    user_id: "a".into(),
                    info: Some("{}".into())
                },
                PresenceMember {
                    user_id: "b".into(),
                    info: None
                }
            ]
        );
    }
}
