//! [`Queue`] on a single Redis server (feature `redis`): shared by every node and durable
//! across node crashes (as durable as the Redis server's own persistence).
//!
//! # Layout
//! Per queue `q`, with `P` the prefix (default `sockudo:queue:`), all keys share the hash tag
//! `{q}` so each script touches one Redis Cluster slot:
//! - `P{q}:seq` — id counter (`INCR`);
//! - `P{q}:jobs` — hash id → payload, `P{q}:attempts` — hash id → claims so far;
//! - `P{q}:ready` — sorted set id by due time (ms, Redis clock);
//! - `P{q}:leased` — sorted set id by lease deadline (ms, Redis clock);
//! - `P{q}:created` — sorted set id by enqueue time (for `oldest_age`);
//! - `P{q}:dead` — list of dead-lettered ids, newest first, with `P{q}:dead:jobs` /
//!   `P{q}:dead:attempts` holding their payloads and attempt counts.
//!
//! # Atomicity and time
//! Every operation is one Lua script, so the moves between sets are atomic. Times come from
//! the Redis server (`TIME`), never from the nodes, so clock skew between nodes cannot make a
//! lease expire early or late.
//!
//! `claim` first reaps: leased jobs whose deadline passed move back to `ready` (up to 1000
//! per call), so work held by a node that died is redelivered after its lease by whichever
//! node claims next; then it moves up to `max` due jobs from `ready` to `leased` with the new
//! deadline and bumps their attempts. `ack` deletes the job everywhere. `nack` reschedules it
//! in `ready` or moves it to the dead-letter list (bounded by
//! [`RedisQueueOptions::dead_letter_cap`]; the oldest entries and their data are dropped).
//!
//! # Connection and timeouts
//! As `RedisCache`: one reconnecting [`ConnectionManager`] shared by clones, every operation
//! under [`RedisQueueOptions::operation_timeout`], and `connect` fails when Redis does not
//! answer a `PING` within [`RedisQueueOptions::connect_timeout`].

use std::fmt;
use std::time::Duration;

use crate::redis_conn::{RedisConn, RedisEndpoint};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{RedisError, Script, Value};

use super::{Job, JobId, NackOutcome, Queue, QueueError, QueueStats};

/// Server time in ms, shared by every script.
const NOW: &str = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS: seq, jobs, attempts, ready, created. ARGV: payload, delay ms. Returns the id.
const ENQUEUE: &str = r"
local id = tostring(redis.call('INCR', KEYS[1]))
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('HSET', KEYS[3], id, 0)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
redis.call('ZADD', KEYS[5], now, id)
return id
";

/// KEYS: ready, leased, attempts, jobs. ARGV: lease ms, max. Returns flat [id, payload,
/// attempts, ...].
const CLAIM: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for i = 1, #expired do
  redis.call('ZREM', KEYS[2], expired[i])
  redis.call('ZADD', KEYS[1], now, expired[i])
end
local out = {}
local max = tonumber(ARGV[2])
if max <= 0 then return out end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max)
local deadline = now + tonumber(ARGV[1])
for i = 1, #ids do
  local id = ids[i]
  redis.call('ZREM', KEYS[1], id)
  local p = redis.call('HGET', KEYS[4], id)
  if p then
    local a = redis.call('HINCRBY', KEYS[3], id, 1)
    redis.call('ZADD', KEYS[2], deadline, id)
    out[#out + 1] = id
    out[#out + 1] = p
    out[#out + 1] = a
  end
end
return out
";

/// KEYS: jobs, attempts, ready, leased, created. ARGV: id. Returns 1 when it existed.
const ACK: &str = r"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return n
";

/// KEYS: jobs, attempts, ready, leased, created, dead, dead:jobs, dead:attempts.
/// ARGV: id, retry ms, max attempts, dead-letter cap.
/// Returns -1 unknown job, 0 retried, 1 dead-lettered.
const NACK: &str = r"
local id = ARGV[1]
local p = redis.call('HGET', KEYS[1], id)
if not p then return -1 end
local a = tonumber(redis.call('HGET', KEYS[2], id) or '0')
redis.call('ZREM', KEYS[4], id)
if a >= tonumber(ARGV[3]) then
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('LPUSH', KEYS[6], id)
  redis.call('HSET', KEYS[7], id, p)
  redis.call('HSET', KEYS[8], id, a)
  local cap = tonumber(ARGV[4])
  while redis.call('LLEN', KEYS[6]) > cap do
    local old = redis.call('RPOP', KEYS[6])
    redis.call('HDEL', KEYS[7], old)
    redis.call('HDEL', KEYS[8], old)
  end
  return 1
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
return 0
";

/// KEYS: jobs, created, dead. Returns [depth, age ms or -1, dead].
const STATS: &str = r"
local depth = redis.call('HLEN', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local age = -1
if #oldest == 2 then
  age = now - tonumber(oldest[2])
  if age < 0 then age = 0 end
end
return {depth, age, redis.call('LLEN', KEYS[3])}
";

/// KEYS: dead, dead:jobs, dead:attempts. ARGV: limit. Returns flat [id, payload, attempts, ...].
const DEAD_LETTERS: &str = r"
local out = {}
local limit = tonumber(ARGV[1])
if limit <= 0 then return out end
local ids = redis.call('LRANGE', KEYS[1], 0, limit - 1)
for i = 1, #ids do
  local p = redis.call('HGET', KEYS[2], ids[i])
  if p then
    out[#out + 1] = ids[i]
    out[#out + 1] = p
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], ids[i]) or '0')
  end
end
return out
";

/// The largest delay/lease sent to Redis (~35 years): keeps scores exact in Lua doubles.
const MAX_MS: u64 = 1 << 40;

/// Settings of a [`RedisQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisQueueOptions {
    /// Prepended to every key (default `sockudo:queue:`). See the module docs.
    pub prefix: String,
    /// Upper bound of every operation, including a wait for a reconnection (default 2 s).
    pub operation_timeout: Duration,
    /// Upper bound of connecting and the first `PING` (default 2 s).
    pub connect_timeout: Duration,
    /// Dead letters kept per queue (default 10 000); the oldest are dropped beyond it.
    pub dead_letter_cap: usize,
}

impl Default for RedisQueueOptions {
    fn default() -> Self {
        RedisQueueOptions {
            prefix: RedisQueue::DEFAULT_PREFIX.to_owned(),
            operation_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            dead_letter_cap: super::memory::DEFAULT_DEAD_LETTER_CAP,
        }
    }
}

#[derive(Clone)]
struct Scripts {
    enqueue: Script,
    claim: Script,
    ack: Script,
    nack: Script,
    stats: Script,
    dead_letters: Script,
}

/// Redis-backed [`Queue`]. Cheap to clone: clones share one reconnecting connection.
#[derive(Clone)]
pub struct RedisQueue {
    conn: RedisConn,
    options: RedisQueueOptions,
    scripts: Scripts,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> QueueError {
    QueueError::Unavailable(format!("redis: {e}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(MAX_MS).min(MAX_MS)
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// Parse the flat `[id, payload, attempts, ...]` answer of CLAIM / DEAD_LETTERS.
fn parse_jobs(values: Vec<Value>) -> Result<Vec<Job>, QueueError> {
    let bad = || QueueError::Unavailable("redis: malformed queue script answer".into());
    let mut out = Vec::with_capacity(values.len() / 3);
    let mut it = values.into_iter();
    while let Some(id) = it.next() {
        let (Some(payload), Some(attempts)) = (it.next(), it.next()) else {
            return Err(bad());
        };
        let id: String = redis::from_redis_value(id).map_err(|_| bad())?;
        let payload: Vec<u8> = redis::from_redis_value(payload).map_err(|_| bad())?;
        let attempts: i64 = redis::from_redis_value(attempts).map_err(|_| bad())?;
        out.push(Job {
            id: JobId(id),
            payload: Bytes::from(payload),
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

impl RedisQueue {
    /// The key prefix used when none is given.
    pub const DEFAULT_PREFIX: &'static str = "sockudo:queue:";

    /// Connect to `url` with the default options.
    pub async fn connect(url: impl Into<RedisEndpoint>) -> Result<Self, QueueError> {
        Self::connect_with(url, RedisQueueOptions::default()).await
    }

    /// Connect with explicit options. Fails with [`QueueError::Unavailable`] when Redis does
    /// not answer a `PING` within the connect timeout.
    pub async fn connect_with(
        url: impl Into<RedisEndpoint>,
        options: RedisQueueOptions,
    ) -> Result<Self, QueueError> {
        let op = options.operation_timeout;
        let conn = crate::redis_conn::connect(&url.into(), op, options.connect_timeout)
            .await
            .map_err(QueueError::Unavailable)?;
        let scripts = Scripts {
            enqueue: script(ENQUEUE),
            claim: script(CLAIM),
            ack: script(ACK),
            nack: script(NACK),
            stats: script(STATS),
            dead_letters: script(DEAD_LETTERS),
        };
        Ok(RedisQueue {
            conn,
            options,
            scripts,
        })
    }

    /// The options the queue was built with.
    pub fn options(&self) -> &RedisQueueOptions {
        &self.options
    }

    /// The Redis key of `part` of `queue` (`{prefix}{queue}:{part}`).
    pub fn redis_key(&self, queue: &str, part: &str) -> String {
        format!("{}{{{queue}}}:{part}", self.options.prefix)
    }

    fn keys(&self, queue: &str, parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| self.redis_key(queue, p)).collect()
    }

    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        match tokio::time::timeout(self.options.operation_timeout, f(self.conn.clone())).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Unavailable(format!(
                "redis queue {what} timed out after {} ms",
                self.options.operation_timeout.as_millis()
            ))),
        }
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(
        &self,
        queue: &str,
        payload: Bytes,
        delay: Duration,
    ) -> Result<JobId, QueueError> {
        let keys = self.keys(queue, &["seq", "jobs", "attempts", "ready", "created"]);
        let script = &self.scripts.enqueue;
        self.run("enqueue", |mut c| async move {
            let id: String = script
                .key(keys)
                .arg(payload.as_ref())
                .arg(millis(delay))
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(JobId(id))
        })
        .await
    }

    async fn claim(
        &self,
        queue: &str,
        _consumer: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, QueueError> {
        let keys = self.keys(queue, &["ready", "leased", "attempts", "jobs"]);
        let script = &self.scripts.claim;
        self.run("claim", |mut c| async move {
            let v: Vec<Value> = script
                .key(keys)
                .arg(millis(lease).max(1))
                .arg(max)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            parse_jobs(v)
        })
        .await
    }

    async fn ack(&self, queue: &str, id: &JobId) -> Result<bool, QueueError> {
        let keys = self.keys(queue, &["jobs", "attempts", "ready", "leased", "created"]);
        let script = &self.scripts.ack;
        self.run("ack", |mut c| async move {
            let n: i64 = script
                .key(keys)
                .arg(&id.0)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
    }

    async fn nack(
        &self,
        queue: &str,
        id: &JobId,
        retry_in: Duration,
        max_attempts: u32,
    ) -> Result<NackOutcome, QueueError> {
        let keys = self.keys(
            queue,
            &[
                "jobs",
                "attempts",
                "ready",
                "leased",
                "created",
                "dead",
                "dead:jobs",
                "dead:attempts",
            ],
        );
        let script = &self.scripts.nack;
        let cap = self.options.dead_letter_cap;
        self.run("nack", |mut c| async move {
            let n: i64 = script
                .key(keys)
                .arg(&id.0)
                .arg(millis(retry_in))
                .arg(max_attempts)
                .arg(cap)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            match n {
                0 => Ok(NackOutcome::Retried),
                1 => Ok(NackOutcome::DeadLettered),
                _ => Err(QueueError::UnknownJob(id.clone())),
            }
        })
        .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let keys = self.keys(queue, &["jobs", "created", "dead"]);
        let script = &self.scripts.stats;
        self.run("stats", |mut c| async move {
            let (depth, age, dead): (i64, i64, i64) = script
                .key(keys)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(QueueStats {
                depth: u64::try_from(depth).unwrap_or(0),
                oldest_age: u64::try_from(age).ok().map(Duration::from_millis),
                dead_letters: u64::try_from(dead).unwrap_or(0),
            })
        })
        .await
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, QueueError> {
        let keys = self.keys(queue, &["dead", "dead:jobs", "dead:attempts"]);
        let script = &self.scripts.dead_letters;
        self.run("dead_letters", |mut c| async move {
            let v: Vec<Value> = script
                .key(keys)
                .arg(limit)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            parse_jobs(v)
        })
        .await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.run("PING", |mut c| async move {
            let _: Value = redis::cmd("PING")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_clamps() {
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::MAX), MAX_MS);
    }
}
