//! [`PresenceStore`] in Redis (feature `redis`): every operation is one Lua script, hence
//! atomic.
//!
//! # Keys (prefix `P`, default `sockudo`)
//! | key | type | content |
//! |---|---|---|
//! | `P:presence:{app}:{channel}:users` | hash | user → number of nodes holding it |
//! | `P:presence:{app}:{channel}:info` | hash | user → `user_info` JSON (set by the first join) |
//! | `P:presence:{app}:{channel}:nodes` | set | `node \0 user` for every (node, user) pair |
//! | `P:presence:{app}:{channel}:seq` | string | the channel's presence sequence number |
//! | `P:presence_node:{node}` | set | `app \0 channel \0 user`: everything `node` contributed |
//! | `P:presence_nodes` | set | nodes with a non-empty `presence_node` set |
//!
//! The per-node set is the index the sweep walks: it holds one entry per (channel, user) the
//! node contributed, which is the brief's "set of `app\0channel` plus a per-node+channel user
//! set" folded into one key (the same information, one key fewer per channel and node, and the
//! sweep needs no second lookup). `presence_nodes` lets survivors find nodes that died while no
//! peer watched them ([`PresenceStore::nodes`]).
//!
//! Redis deletes empty hashes and sets by itself, so nothing is left behind when the last
//! member of a channel leaves or a node is swept. The `seq` key cannot go with them (the
//! sequence must not restart when a channel empties, see [`PresenceStore`]), so it expires
//! [`SEQ_TTL_SECS`] after its last use instead, and a missing key starts from the server's
//! clock in microseconds: a restarted sequence still begins above every number the expired
//! one handed out, as long as a channel averages fewer than a million membership changes a
//! second.
//!
//! Injectivity: Pusher channel names cannot contain `:` or NUL, node ids are refused when they
//! contain NUL, so the composite keys and set members above never collide (an app id
//! containing `:` is still unambiguous because the channel, the last segment, cannot).
//!
//! # Semantics
//! - `join`: refuses a new user when the channel has `max_members` users; otherwise adds the
//!   (node, user) pair once, increments the user's node count on a new pair, and reports
//!   `first` when the count went from 0 to 1. Returns the members after the join.
//! - `leave`: removes the pair once; reports the removal when the count reaches 0.
//! - A `first` join and every removal (leave or sweep) take the channel's next `seq` in the
//!   same script.
//! - `sweep_node`: removes every pair of the node in one script and returns the members whose
//!   count reached 0. Scripts run one at a time, so of several concurrent sweeps of one node
//!   the first removes everything and the others find an empty index: each removal is
//!   reported exactly once.
//!
//! # Limitations
//! - **Redis Cluster**: `join`/`leave` touch the channel's three keys plus the node's index and
//!   `presence_nodes`; `sweep_node` derives channel keys inside the script. Those keys live
//!   in different hash slots, which Redis Cluster refuses in one script. This store targets a
//!   single Redis (or a primary with replicas / Sentinel). For Redis Cluster the layout would
//!   put every key a node writes under the node's hash tag (`P:{node}:…`) and make `members`
//!   gather from all nodes' keys, which is a different design; left as a documented limitation.
//! - The scripts read `TIME` before writing (seeding a channel's `seq`), which Redis allows
//!   with effects replication, the default since Redis 5; older servers refuse it.
//! - A sweep runs in one script: a node holding N presence memberships blocks Redis for a
//!   time linear in N (a few ms per 10,000 memberships).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};

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

/// KEYS: users, info, nodes, node index, presence_nodes, seq.
/// ARGV: user, node, has_info ('1'/'0'), info, max_members, index entry, seq ttl.
/// Returns {first, full, users, flat info hash, seq, the channel's sequence now}. (No `HMGET … unpack(users)`: Lua's
/// `unpack` fails beyond a few thousand values.)
const JOIN_SCRIPT: &str = r"
local user = ARGV[1]
local pair = ARGV[2] .. '\0' .. user
local first = 0
local full = 0
local seq = 0
if redis.call('HEXISTS', KEYS[1], user) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  full = 1
elseif redis.call('SADD', KEYS[3], pair) == 1 then
  if redis.call('HINCRBY', KEYS[1], user, 1) == 1 then
    first = 1
    seq = next_seq(KEYS[6], ARGV[7])
    if ARGV[3] == '1' then
      redis.call('HSET', KEYS[2], user, ARGV[4])
    else
      redis.call('HDEL', KEYS[2], user)
    end
  end
  redis.call('SADD', KEYS[4], ARGV[6])
  redis.call('SADD', KEYS[5], ARGV[2])
end
return {first, full, redis.call('HKEYS', KEYS[1]), redis.call('HGETALL', KEYS[2]), seq, tonumber(redis.call('GET', KEYS[6]) or '0')}
";

/// KEYS: users, info, nodes, node index, presence_nodes, seq.
/// ARGV: user, node, index entry, seq ttl. Returns the removal's seq when the user left the
/// channel, 0 otherwise.
const LEAVE_SCRIPT: &str = r"
local user = ARGV[1]
if redis.call('SREM', KEYS[3], ARGV[2] .. '\0' .. user) == 0 then
  return 0
end
redis.call('SREM', KEYS[4], ARGV[3])
if redis.call('SCARD', KEYS[4]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[2])
end
if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
  redis.call('HDEL', KEYS[1], user)
  redis.call('HDEL', KEYS[2], user)
  return next_seq(KEYS[6], ARGV[4])
end
return 0
";

/// KEYS: users, info, seq. Returns {users, flat info hash, seq}, one consistent snapshot
/// with the sequence number of the last change it reflects.
const MEMBERS_SCRIPT: &str = r"
return {redis.call('HKEYS', KEYS[1]), redis.call('HGETALL', KEYS[2]), tonumber(redis.call('GET', KEYS[3]) or '0')}
";

/// KEYS: node index, presence_nodes. ARGV: prefix, node, seq ttl.
/// Returns a flat list app, channel, user, seq, … of members whose last node this was.
const SWEEP_SCRIPT: &str = r"
local prefix = ARGV[1]
local node = ARGV[2]
local removed = {}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s1 = string.find(entry, '\0', 1, true)
  local s2 = s1 and string.find(entry, '\0', s1 + 1, true)
  if s2 then
    local app = string.sub(entry, 1, s1 - 1)
    local channel = string.sub(entry, s1 + 1, s2 - 1)
    local user = string.sub(entry, s2 + 1)
    local base = prefix .. ':presence:' .. app .. ':' .. channel
    if redis.call('SREM', base .. ':nodes', node .. '\0' .. user) == 1 then
      if redis.call('HINCRBY', base .. ':users', user, -1) <= 0 then
        redis.call('HDEL', base .. ':users', user)
        redis.call('HDEL', base .. ':info', user)
        removed[#removed + 1] = app
        removed[#removed + 1] = channel
        removed[#removed + 1] = user
        removed[#removed + 1] = next_seq(base .. ':seq', ARGV[3])
      end
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], node)
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

/// Redis-backed [`PresenceStore`]; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct RedisPresenceStore {
    conn: ConnectionManager,
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

struct ChannelKeys {
    users: String,
    info: String,
    nodes: String,
    seq: String,
}

impl RedisPresenceStore {
    /// Connect with the default options (prefix `sockudo`).
    pub async fn connect(url: &str) -> Result<Self, AdapterError> {
        Self::connect_with(url, RedisPresenceOptions::default()).await
    }

    /// Connect with explicit options. Fails when Redis does not answer a `PING` in time.
    pub async fn connect_with(url: &str, opts: RedisPresenceOptions) -> Result<Self, AdapterError> {
        let client = Client::open(url).map_err(|e| unavailable("url", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(opts.operation_timeout)
            .set_response_timeout(opts.operation_timeout)
            .set_number_of_retries(2)
            .set_factor(2)
            .set_max_delay(1000);
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| unavailable("connect", e))?;
            let _: Value = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("PING", e))?;
            Ok::<_, AdapterError>(conn)
        };
        let conn = tokio::time::timeout(opts.connect_timeout, connect)
            .await
            .map_err(|_| {
                unavailable(
                    "connect",
                    format!("no answer within {} ms", opts.connect_timeout.as_millis()),
                )
            })??;
        Ok(RedisPresenceStore {
            conn,
            opts,
            join: Script::new(&format!("{NEXT_SEQ}{JOIN_SCRIPT}")),
            leave: Script::new(&format!("{NEXT_SEQ}{LEAVE_SCRIPT}")),
            members: Script::new(MEMBERS_SCRIPT),
            sweep: Script::new(&format!("{NEXT_SEQ}{SWEEP_SCRIPT}")),
        })
    }

    fn channel_keys(&self, app: &str, channel: &str) -> ChannelKeys {
        let base = format!("{}:presence:{app}:{channel}", self.opts.prefix);
        ChannelKeys {
            users: format!("{base}:users"),
            info: format!("{base}:info"),
            nodes: format!("{base}:nodes"),
            seq: format!("{base}:seq"),
        }
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:presence_node:{node}", self.opts.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:presence_nodes", self.opts.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, AdapterError> {
        let mut c = self.conn.clone();
        match tokio::time::timeout(self.opts.operation_timeout, inv.invoke_async::<T>(&mut c)).await
        {
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
}

/// `app \0 channel \0 user`: one entry of a node's index.
fn index_entry(app: &str, channel: &str, user: &str) -> Vec<u8> {
    let mut e = Vec::with_capacity(app.len() + channel.len() + user.len() + 2);
    e.extend_from_slice(app.as_bytes());
    e.push(0);
    e.extend_from_slice(channel.as_bytes());
    e.push(0);
    e.extend_from_slice(user.as_bytes());
    e
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn join(
        &self,
        node_id: &str,
        j: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        check_node(node_id)?;
        let k = self.channel_keys(j.app_id, j.channel);
        let mut inv = self.join.prepare_invoke();
        inv.key(&k.users)
            .key(&k.info)
            .key(&k.nodes)
            .key(self.node_key(node_id))
            .key(self.nodes_key())
            .key(&k.seq);
        inv.arg(j.user_id)
            .arg(node_id)
            .arg(if j.info.is_some() { "1" } else { "0" })
            .arg(j.info.unwrap_or_default())
            .arg(j.max_members)
            .arg(index_entry(j.app_id, j.channel, j.user_id))
            .arg(SEQ_TTL_SECS);
        type Reply = (i64, i64, Vec<String>, Vec<String>, u64, u64);
        let (first, full, users, infos, seq, snapshot_seq): Reply = self.run("join", &inv).await?;
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
        let k = self.channel_keys(app_id, channel);
        let mut inv = self.leave.prepare_invoke();
        inv.key(&k.users)
            .key(&k.info)
            .key(&k.nodes)
            .key(self.node_key(node_id))
            .key(self.nodes_key())
            .key(&k.seq);
        inv.arg(user_id)
            .arg(node_id)
            .arg(index_entry(app_id, channel, user_id))
            .arg(SEQ_TTL_SECS);
        let seq: u64 = self.run("leave", &inv).await?;
        Ok(PresenceLeave {
            gone: seq != 0,
            seq,
        })
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<PresenceSnapshot, AdapterError> {
        let k = self.channel_keys(app_id, channel);
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
        let mut inv = self.sweep.prepare_invoke();
        inv.key(self.node_key(node_id)).key(self.nodes_key());
        inv.arg(&self.opts.prefix).arg(node_id).arg(SEQ_TTL_SECS);
        let flat: Vec<Value> = self.run("sweep", &inv).await?;
        let mut removed = Vec::with_capacity(flat.len() / 4);
        let mut it = flat.into_iter();
        while let (Some(app_id), Some(channel), Some(user_id), Some(seq)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            let text = |v: Value| {
                redis::from_redis_value::<String>(&v).map_err(|e| unavailable("sweep reply", e))
            };
            let seq =
                redis::from_redis_value::<u64>(&seq).map_err(|e| unavailable("sweep reply", e))?;
            removed.push(RemovedMember {
                app_id: text(app_id)?,
                channel: text(channel)?,
                user_id: text(user_id)?,
                seq,
            });
        }
        Ok(removed)
    }

    async fn nodes(&self) -> Result<Vec<String>, AdapterError> {
        let mut c = self.conn.clone();
        let cmd = redis::cmd("SMEMBERS").arg(self.nodes_key()).to_owned();
        match tokio::time::timeout(
            self.opts.operation_timeout,
            cmd.query_async::<Vec<String>>(&mut c),
        )
        .await
        {
            Ok(r) => r.map_err(|e| unavailable("nodes", e)),
            Err(_) => Err(unavailable("nodes", "timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_nul_separated() {
        assert_eq!(
            index_entry("a", "presence-x", "u:1"),
            b"a\0presence-x\0u:1".to_vec()
        );
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
