//! [`Cache`] on a single Redis server (feature `redis`).
//!
//! # Connection
//! One [`ConnectionManager`] (a multiplexed connection shared by every clone) that reconnects
//! by itself: when a command fails with an I/O error the manager starts a new connection in
//! the background, with a short capped back-off, and later commands use it. The cache never
//! has to be rebuilt after Redis restarts.
//!
//! # Timeouts
//! Every operation runs under [`RedisCacheOptions::operation_timeout`] (default 1 s), which
//! also bounds the wait for a reconnection in progress. An unreachable or stalled Redis
//! therefore yields [`CacheError::Unavailable`] within that bound instead of hanging the
//! caller. [`RedisCache::connect`] checks the server with a `PING` under
//! [`RedisCacheOptions::connect_timeout`] and fails when it does not answer, so a node started
//! against a dead Redis stops with a clear error instead of serving without its cache.
//!
//! # Keys
//! A cache key `k` is stored as `{prefix}{k}` with `k` wrapped in braces, e.g. `sockudo:{rl:app-1}`
//! for prefix `sockudo:`. Redis Cluster hashes only the part between the first `{` and the next
//! `}` (the *hash tag*), so every key is placed by its own name, and later companion keys built
//! as `{prefix}{k}:suffix` land in the same slot as `k`, which keeps multi-key scripts on them
//! cluster-safe. The mapping is injective for a fixed prefix (distinct cache keys are distinct
//! Redis keys) whatever characters `k` contains; a `}` inside `k` only shortens its hash tag,
//! which changes placement, never identity. A prefix that itself contains a `{…}` hash tag pins
//! every key of this cache to one slot.
//!
//! # Semantics
//! - `set` is `SET … [PX ms]` (a plain `SET` also clears an older TTL, as the contract says).
//! - `set_if_absent` is `SET … NX [PX ms]`: one atomic step on the server.
//! - `compare_and_swap` is one Lua script (`GET`, compare byte for byte, `SET … [PX ms]`).
//! - `increment` is one Lua script (`INCRBY`, then `PEXPIRE` only if the key did not exist
//!   before), so the TTL is applied exactly at creation and fixed windows expire on time.
//! - TTLs are rounded up to whole milliseconds (at least 1 ms).

use std::fmt;
use std::time::Duration;

use crate::redis_conn::{RedisConn, RedisEndpoint};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{RedisError, Script, Value};

use super::{Cache, CacheError};

/// `INCRBY` with the TTL applied only when the key is created.
///
/// KEYS[1] = key, ARGV[1] = delta, ARGV[2] = TTL in ms (0 = none). Returns the new value, or
/// `false` (nil) when the stored value is not an integer, the result would overflow, or the
/// key holds another Redis type. Other errors (OOM, …) are passed through.
const INCREMENT_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1]) == 1
local v = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(v) == 'table' and v.err then
  local e = v.err
  if string.find(e, 'not an integer', 1, true) or string.find(e, 'overflow', 1, true) or string.find(e, 'WRONGTYPE', 1, true) then
    return false
  end
  return v
end
local ttl = tonumber(ARGV[2])
if (not existed) and ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return v
";

/// Compare-and-swap on a string value.
///
/// KEYS[1] = key, ARGV[1] = `1` when a value is expected (`0`: absent expected), ARGV[2] =
/// expected value, ARGV[3] = new value, ARGV[4] = TTL in ms (0 = none). Returns 1 when swapped.
const COMPARE_AND_SWAP_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// The largest TTL sent to Redis, in ms (~146 million years): Redis rejects expiry times that
/// overflow when added to its clock.
const MAX_TTL_MS: u64 = 1 << 62;

/// Settings of a [`RedisCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCacheOptions {
    /// Prepended to every key (default `sockudo:`). See the module docs for the key layout.
    pub prefix: String,
    /// Upper bound of every operation, including a wait for a reconnection (default 1 s).
    pub operation_timeout: Duration,
    /// Upper bound of [`RedisCache::connect_with`]: connecting and the first `PING`
    /// (default 2 s).
    pub connect_timeout: Duration,
}

impl Default for RedisCacheOptions {
    fn default() -> Self {
        RedisCacheOptions {
            prefix: RedisCache::DEFAULT_PREFIX.to_owned(),
            operation_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Redis-backed [`Cache`]. Cheap to clone: clones share one reconnecting connection.
#[derive(Clone)]
pub struct RedisCache {
    conn: RedisConn,
    prefix: String,
    operation_timeout: Duration,
    increment: Script,
    compare_and_swap: Script,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> CacheError {
    CacheError::Unavailable(format!("redis: {e}"))
}

/// TTL in whole milliseconds, rounded up, at least 1, at most [`MAX_TTL_MS`].
fn ttl_millis(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000).max(1);
    u64::try_from(ms).unwrap_or(MAX_TTL_MS).min(MAX_TTL_MS)
}

/// `{prefix}{key}` with `key` in braces: the Redis Cluster hash tag of the key.
fn wrap_key(prefix: &str, key: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + key.len() + 2);
    k.push_str(prefix);
    k.push('{');
    k.push_str(key);
    k.push('}');
    k
}

impl RedisCache {
    /// The key prefix used when none is given.
    pub const DEFAULT_PREFIX: &'static str = "sockudo:";

    /// Connect to `url` (`redis://[user:password@]host:port[/db]`) with `prefix` and the
    /// default timeouts. Fails with [`CacheError::Unavailable`] when Redis does not answer a
    /// `PING` within the connect timeout.
    pub async fn connect(url: impl Into<RedisEndpoint>, prefix: &str) -> Result<Self, CacheError> {
        Self::connect_with(
            url,
            RedisCacheOptions {
                prefix: prefix.to_owned(),
                ..RedisCacheOptions::default()
            },
        )
        .await
    }

    /// Connect with explicit options.
    pub async fn connect_with(
        url: impl Into<RedisEndpoint>,
        options: RedisCacheOptions,
    ) -> Result<Self, CacheError> {
        let op = options.operation_timeout;
        let conn = crate::redis_conn::connect(&url.into(), op, options.connect_timeout)
            .await
            .map_err(CacheError::Unavailable)?;
        Ok(RedisCache {
            conn,
            prefix: options.prefix,
            operation_timeout: op,
            increment: Script::new(INCREMENT_SCRIPT),
            compare_and_swap: Script::new(COMPARE_AND_SWAP_SCRIPT),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-operation timeout.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// The Redis key under which cache key `key` is stored: `{prefix}{key}` with `key` in
    /// braces (a Redis Cluster hash tag; see the module docs).
    pub fn redis_key(&self, key: &str) -> String {
        wrap_key(&self.prefix, key)
    }

    /// Run `f` on a clone of the connection under the operation timeout.
    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, CacheError>>,
    {
        match tokio::time::timeout(self.operation_timeout, f(self.conn.clone())).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Unavailable(format!(
                "redis {what} timed out after {} ms",
                self.operation_timeout.as_millis()
            ))),
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let k = self.redis_key(key);
        self.run("GET", |mut c| async move {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(v.map(Bytes::from))
        })
        .await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        let k = self.redis_key(key);
        self.run("SET", |mut c| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&k).arg(value.as_ref());
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl_millis(ttl));
            }
            let _: Value = cmd.query_async(&mut c).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError> {
        let k = self.redis_key(key);
        self.run("SET NX", |mut c| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&k).arg(value.as_ref()).arg("NX");
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl_millis(ttl));
            }
            let v: Value = cmd.query_async(&mut c).await.map_err(unavailable)?;
            Ok(!matches!(v, Value::Nil))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let k = self.redis_key(key);
        self.run("DEL", |mut c| async move {
            let n: i64 = redis::cmd("DEL")
                .arg(&k)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, CacheError> {
        let k = self.redis_key(key);
        let ttl_ms = ttl.map_or(0, ttl_millis);
        let script = &self.increment;
        self.run("INCRBY", |mut c| async move {
            let v: Option<i64> = script
                .key(&k)
                .arg(delta)
                .arg(ttl_ms)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            v.ok_or(CacheError::NotAnInteger)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError> {
        let k = self.redis_key(key);
        let ttl_ms = ttl.map_or(0, ttl_millis);
        let script = &self.compare_and_swap;
        self.run("compare-and-swap", |mut c| async move {
            let swapped: i64 = script
                .key(&k)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new.as_ref())
                .arg(ttl_ms)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(swapped == 1)
        })
        .await
    }

    async fn ping(&self) -> Result<(), CacheError> {
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
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(Duration::from_millis(200)), 200);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn keys_are_prefixed_and_wrapped_in_a_hash_tag() {
        assert_eq!(wrap_key("sockudo:", "rl:app-1"), "sockudo:{rl:app-1}");
        assert_eq!(wrap_key("", ""), "{}");
        // Injective for a fixed prefix, whatever the key contains.
        assert_ne!(wrap_key("p:", "a}"), wrap_key("p:", "a"));
        assert_ne!(wrap_key("p:", "{a"), wrap_key("p:", "a"));
    }
}
