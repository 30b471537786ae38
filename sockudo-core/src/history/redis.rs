//! [`HistoryStore`] on Redis Streams (feature `redis`), shared by every node.
//!
//! # Layout
//! For (app, channel) with base `B = {prefix}{h:<len(app)>:<app>:<len(channel)>:<channel>}`:
//! - `B:meta`: hash `stream_id` (the generation, 32 hex digits) and `serial` (the head);
//! - `B:s`: the stream; serial `n` is entry id `n-1`, with fields `frame`, `message_id` and
//!   `ts` (Redis server time in ms at append), so a serial range is one `XRANGE`;
//! - `B:mid:<message_id>`: dedup claim `"<stream_id>:<serial>"` with `PX` = dedup window.
//!
//! The lengths make the mapping injective whatever the names contain; every key of a channel
//! shares the Redis Cluster hash tag inside `B`, so the multi-key scripts are cluster-safe.
//!
//! # Append: one script, optimistic on the head
//! The stored frame must contain its own `(stream_id, serial)`, which only Rust can build
//! (`frame_for`). Instead of reserving a serial in one script and storing the frame in a
//! second one, `append` *predicts* the position, builds the frame for it, and sends one
//! script that commits only if the prediction holds:
//! 1. check the stream state (see *Lost state*), creating it with the caller's fresh id;
//! 2. a live dedup claim of this `message_id` for the current stream → `duplicate`, with the
//!    original serial (before the prediction check, so duplicates never need a retry);
//! 3. `(stream_id, serial)` differs from the prediction → nothing is written; the script
//!    returns the real head and `append` rebuilds the frame and tries again;
//! 4. otherwise `XADD B:s <serial+1>-1 …`, then `HSET serial`, then the dedup claim, then
//!    count/age trimming, all inside the script, so nothing can interleave.
//!
//! Why not two scripts (reserve, then store): a crash or timeout between them leaves a serial
//! that was assigned but never stored, i.e. a permanent gap, and every resume across it would
//! fail with `continuity_unverifiable`; worse, a reader cannot tell a crashed append from one
//! still in flight, so even healthy concurrent publishing would make resumes fail transiently,
//! and `XADD` rejects ids below the stream's top, so a slower appender holding serial `n`
//! could not store it after a faster one stored `n+1`. The single script keeps the contract
//! exact: the stored serials are always `oldest..=head` with no hole, and the head never
//! runs ahead of the stream.
//!
//! The price is contention: appends to one channel that race on the same head retry. Within a
//! node, appends to one channel go through a per-channel lane (an async mutex remembering the
//! last head seen), so the prediction is right at the first attempt unless another node
//! appended meanwhile, and a node with nothing cached pays one extra round trip. Per channel
//! and node that is one round trip per append; different channels do not contend.
//!
//! A timed-out append may still have been committed by Redis: the caller sees
//! `Unavailable`, and a retry with the same `message_id` within the window gets the original
//! serial back (`duplicate`), which is exactly what publish idempotency needs.
//!
//! # Lost state
//! The meta hash is the authority on the generation. Every script first checks it against
//! the stream: meta missing (or without `stream_id`/`serial`), `serial > 0` with no stream
//! key, or a stream entry beyond `serial` (or an `XADD` refused because the stream's top is
//! beyond it) means the state was flushed, evicted or partially restored. The script then
//! deletes both keys and starts a fresh generation with a random id passed in by the caller,
//! so serials are never reused under an old `stream_id`. Old dedup claims name their stream
//! and are ignored in a new one. (An empty stream key is normal: trimming keeps the key.)
//!
//! # Retention
//! Count: `XTRIM MAXLEN = max_messages` (exact, so the first entry is the oldest retained
//! serial). Age: stream ids are serials, so `XTRIM MINID` by time is impossible; instead the
//! scripts (append and every read) walk the oldest entries, find the first one whose `ts` is
//! within `max_age` of the server clock, and `XTRIM MINID` to it. Only a prefix is ever
//! removed, so what remains stays contiguous; the walk only visits expired entries plus one.
//!
//! Idle channels: every append sets the meta and stream keys to expire `max_age` + 1 min
//! later, so a channel nobody publishes to disappears once everything it held has aged out;
//! a read gives a TTL only to keys that have none (it never extends a channel's life). A
//! channel that reappears after that starts a new generation (resumes from before fail
//! closed with `stream_reset`, which is right: everything they could replay had expired).
//!
//! # Timeouts
//! Every operation (including waiting for the channel's append lane and any retry) runs under
//! the `op_timeout` given to [`RedisHistoryStore::connect`] and yields
//! [`HistoryError::Unavailable`] when Redis is down or slow. The connection is one
//! reconnecting [`ConnectionManager`], configured like the shared `RedisCache`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::{RedisConn, RedisEndpoint};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use redis::{RedisError, Script, Value};

use super::ids::fresh_stream_id;
use super::{
    Appended, HistoryError, HistoryPage, HistoryStore, Retention, StoredMessage, StreamPosition,
};

/// Shared Lua helpers. KEYS[1] is always the meta hash, KEYS[2] the stream.
macro_rules! lua_prelude {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%.0f', n) end
local function id_serial(id) return tonumber(string.match(id, '^(%d+)-')) end
local function field(kv, name)
  for i = 1, #kv, 2 do
    if kv[i] == name then return kv[i + 1] end
  end
  return nil
end
local function fresh_stream(meta, stream, fresh)
  redis.call('DEL', stream, meta)
  redis.call('HSET', meta, 'stream_id', fresh, 'serial', '0')
  return fresh, 0
end
-- The current (stream_id, serial); missing or inconsistent state becomes stream `fresh`.
local function ensure(meta, stream, fresh)
  local m = redis.call('HMGET', meta, 'stream_id', 'serial')
  local sid, serial = m[1], tonumber(m[2])
  if (not sid) or (not serial) then return fresh_stream(meta, stream, fresh) end
  if serial > 0 and redis.call('EXISTS', stream) == 0 then return fresh_stream(meta, stream, fresh) end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 and (id_serial(last[1][1]) or math.huge) > serial then return fresh_stream(meta, stream, fresh) end
  return sid, serial
end
-- An idle channel's keys expire a minute after its newest entry would have aged out, so
-- state of channels nobody publishes to is reclaimed (a later read starts a new stream).
local function keep(meta, stream, age_ms)
  local ttl = age_ms + 60000
  redis.call('PEXPIRE', meta, fmt(ttl))
  if redis.call('EXISTS', stream) == 1 then redis.call('PEXPIRE', stream, fmt(ttl)) end
end
-- Count, then age retention: only ever removes a prefix.
local function trim(stream, max_messages, max_age_ms, now)
  redis.call('XTRIM', stream, 'MAXLEN', '=', max_messages)
  local cutoff = now - max_age_ms
  local start, n = '-', 1
  while true do
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', n)
    if #batch == 0 then
      if start ~= '-' then redis.call('XTRIM', stream, 'MAXLEN', '=', 0) end
      return
    end
    for i = 1, #batch do
      local ts = tonumber(field(batch[i][2], 'ts'))
      if ts == nil or ts >= cutoff then
        if i > 1 or start ~= '-' then redis.call('XTRIM', stream, 'MINID', '=', batch[i][1]) end
        return
      end
    end
    start, n = '(' .. batch[#batch][1], 128
  end
end
"
    };
}

/// Append with an optimistic head check (see the module docs).
///
/// KEYS: meta, stream, dedup claim. ARGV: 1 predicted stream id, 2 predicted serial, 3 fresh
/// stream id (used when the stream must be created), 4 frame, 5 message id, 6 dedup window
/// in ms (`0`: no dedup), 7 max messages, 8 max age in ms.
/// Returns `{'ok', sid, serial}`, `{'dup', sid, original serial}` or `{'stale', sid, head}`.
const APPEND_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local sid, serial = ensure(KEYS[1], KEYS[2], ARGV[3])
local window = tonumber(ARGV[6])
if window > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local psid, pserial = string.match(prev, '^([^:]+):(%d+)$')
    if psid == sid then return {'dup', sid, pserial} end
  end
end
if sid ~= ARGV[1] or fmt(serial) ~= ARGV[2] then return {'stale', sid, fmt(serial)} end
local now = now_ms()
local new = serial + 1
local r = redis.pcall('XADD', KEYS[2], fmt(new) .. '-1', 'frame', ARGV[4], 'message_id', ARGV[5], 'ts', fmt(now))
if type(r) == 'table' and r.err then
  if string.find(r.err, 'equal or smaller', 1, true) then
    local fsid, fserial = fresh_stream(KEYS[1], KEYS[2], ARGV[3])
    return {'stale', fsid, fmt(fserial)}
  end
  return r
end
redis.call('HSET', KEYS[1], 'serial', fmt(new))
if window > 0 then redis.call('SET', KEYS[3], sid .. ':' .. fmt(new), 'PX', ARGV[6]) end
trim(KEYS[2], tonumber(ARGV[7]), tonumber(ARGV[8]), now)
keep(KEYS[1], KEYS[2], tonumber(ARGV[8]))
return {'ok', sid, fmt(new)}
"
);

/// Head and reads.
///
/// KEYS: meta, stream. ARGV: 1 fresh stream id, 2 max messages, 3 max age in ms, 4 mode
/// (`head`, `after`, `before`), 5 first id for `after` (`XRANGE` start) or `before`
/// (`XREVRANGE` end), 6 count. Returns `{sid, head, oldest or '', (id, frame, message_id,
/// ts, complete)…}`.
const READ_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local sid, serial = ensure(KEYS[1], KEYS[2], ARGV[1])
-- A read never extends a channel's life; it only gives a TTL to keys without one (created
-- just now, or by an older version).
if redis.call('PTTL', KEYS[1]) < 0 then keep(KEYS[1], KEYS[2], tonumber(ARGV[3])) end
trim(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms())
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local oldest = ''
if #first > 0 then oldest = fmt(id_serial(first[1][1])) end
local out = {sid, fmt(serial), oldest}
if tonumber(ARGV[6]) > 0 and ARGV[4] ~= 'head' then
  local entries
  if ARGV[4] == 'after' then
    entries = redis.call('XRANGE', KEYS[2], ARGV[5], '+', 'COUNT', ARGV[6])
  else
    entries = redis.call('XREVRANGE', KEYS[2], ARGV[5], '-', 'COUNT', ARGV[6])
  end
  for i = 1, #entries do
    local kv = entries[i][2]
    local frame, mid, ts = field(kv, 'frame'), field(kv, 'message_id'), field(kv, 'ts')
    local complete = '1'
    if frame == nil or mid == nil or ts == nil then complete = '0' end
    out[#out + 1] = entries[i][1]
    out[#out + 1] = frame or ''
    out[#out + 1] = mid or ''
    out[#out + 1] = ts or ''
    out[#out + 1] = complete
  end
end
return out
"
);

/// New generation. KEYS: meta, stream. ARGV: 1 fresh stream id, 2 max age in ms (the meta
/// key expires a minute after it, as in `keep`).
const RESET_SCRIPT: &str = r"
redis.call('DEL', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 'stream_id', ARGV[1], 'serial', '0')
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', tonumber(ARGV[2]) + 60000))
return ARGV[1]
";

/// Attempts of one append before giving up under extreme cross-node contention (each
/// failed attempt means another append to the channel committed meanwhile).
const MAX_APPEND_ATTEMPTS: usize = 64;
/// Above this many remembered channel lanes, idle ones are forgotten.
const MAX_LANES: usize = 16_384;
/// Largest TTL / age sent to Redis, in ms: exact in a Lua double, no clock overflow.
const MAX_MS: u64 = 1 << 50;

/// The Redis keys of one channel's stream (for tests and operations).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeys {
    pub meta: String,
    pub stream: String,
    base: String,
}

impl HistoryKeys {
    fn new(prefix: &str, app_id: &str, channel: &str) -> Self {
        let base = format!(
            "{prefix}{{h:{}:{app_id}:{}:{channel}}}",
            app_id.len(),
            channel.len()
        );
        HistoryKeys {
            meta: format!("{base}:meta"),
            stream: format!("{base}:s"),
            base,
        }
    }

    fn dedup(&self, message_id: &str) -> String {
        format!("{}:mid:{message_id}", self.base)
    }
}

/// The last head this node saw for a channel: `(stream_id, serial)`.
type Lane = Arc<tokio::sync::Mutex<Option<(String, u64)>>>;

/// Redis-backed [`HistoryStore`]. See the module docs.
pub struct RedisHistoryStore {
    conn: RedisConn,
    prefix: String,
    retention: Retention,
    op_timeout: Duration,
    append_script: Script,
    read_script: Script,
    reset_script: Script,
    lanes: DashMap<String, Lane>,
}

impl fmt::Debug for RedisHistoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHistoryStore")
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> HistoryError {
    HistoryError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: impl fmt::Display) -> HistoryError {
    HistoryError::Corrupt(format!("redis history: {what}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(MAX_MS).min(MAX_MS)
}

/// Dedup window in whole ms, rounded up (a non-zero window is at least 1 ms).
fn window_millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000))
        .unwrap_or(MAX_MS)
        .min(MAX_MS)
}

fn text(v: &Value) -> Result<String, HistoryError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| corrupt("non-UTF-8 text")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(corrupt(format_args!("unexpected reply {other:?}"))),
    }
}

fn bytes(v: Value) -> Result<Bytes, HistoryError> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        other => Err(corrupt(format_args!("unexpected reply {other:?}"))),
    }
}

fn number(v: &Value) -> Result<u64, HistoryError> {
    let t = text(v)?;
    t.parse()
        .map_err(|_| corrupt(format_args!("not a serial: {t:?}")))
}

fn array(v: Value) -> Result<Vec<Value>, HistoryError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(corrupt(format_args!("expected an array, got {other:?}"))),
    }
}

/// Serial of a stream entry id `n-1`.
fn id_serial(id: &str) -> Result<u64, HistoryError> {
    id.strip_suffix("-1")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| corrupt(format_args!("bad entry id {id:?}")))
}

/// Parse a read script reply; `ascending` tells the expected order of the entries.
fn parse_page(reply: Value, ascending: bool) -> Result<HistoryPage, HistoryError> {
    let items = array(reply)?;
    if items.len() < 3 || (items.len() - 3) % 5 != 0 {
        return Err(corrupt("malformed read reply"));
    }
    let mut it = items.into_iter();
    let mut next = move || it.next();
    let short = || corrupt("short read reply");
    let stream_id = text(&next().ok_or_else(short)?)?;
    let newest_serial = number(&next().ok_or_else(short)?)?;
    let oldest = text(&next().ok_or_else(short)?)?;
    let oldest_serial = if oldest.is_empty() {
        None
    } else {
        Some(
            oldest
                .parse::<u64>()
                .map_err(|_| corrupt("bad oldest serial"))?,
        )
    };
    let mut messages: Vec<StoredMessage> = Vec::new();
    while let Some(id) = next() {
        let serial = id_serial(&text(&id)?)?;
        let frame = bytes(next().ok_or_else(short)?)?;
        let message_id = text(&next().ok_or_else(short)?)?;
        let ts = text(&next().ok_or_else(short)?)?;
        if text(&next().ok_or_else(short)?)? != "1" {
            return Err(corrupt(format_args!("entry {serial} lacks a field")));
        }
        let published_at_ms = ts
            .parse()
            .map_err(|_| corrupt(format_args!("entry {serial}: bad ts {ts:?}")))?;
        if let Some(prev) = messages.last() {
            let expected = if ascending {
                prev.serial.checked_add(1)
            } else {
                prev.serial.checked_sub(1)
            };
            if expected != Some(serial) {
                return Err(corrupt(format_args!(
                    "gap between serials {} and {serial}",
                    prev.serial
                )));
            }
        }
        if serial > newest_serial || oldest_serial.is_none_or(|o| serial < o) {
            return Err(corrupt(format_args!(
                "entry {serial} outside the retained range"
            )));
        }
        messages.push(StoredMessage {
            serial,
            message_id,
            published_at_ms,
            frame,
        });
    }
    Ok(HistoryPage {
        stream_id,
        messages,
        oldest_serial,
        newest_serial,
    })
}

impl RedisHistoryStore {
    /// Connect to `url` (`redis://[user:password@]host:port[/db]`). Keys start with `prefix`
    /// (e.g. `sockudo:`). Every operation, and connecting (including a first `PING`), is
    /// bounded by `op_timeout`; a Redis that does not answer in time is
    /// [`HistoryError::Unavailable`].
    pub async fn connect(
        url: impl Into<RedisEndpoint>,
        prefix: &str,
        retention: Retention,
        op_timeout: Duration,
    ) -> Result<Self, HistoryError> {
        let conn = crate::redis_conn::connect(&url.into(), op_timeout, op_timeout)
            .await
            .map_err(HistoryError::Unavailable)?;
        Ok(RedisHistoryStore {
            conn,
            prefix: prefix.to_owned(),
            retention,
            op_timeout,
            append_script: Script::new(APPEND_SCRIPT),
            read_script: Script::new(READ_SCRIPT),
            reset_script: Script::new(RESET_SCRIPT),
            lanes: DashMap::new(),
        })
    }

    /// The retention this store applies.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The Redis keys of a channel's stream.
    #[doc(hidden)]
    pub fn keys(&self, app_id: &str, channel: &str) -> HistoryKeys {
        HistoryKeys::new(&self.prefix, app_id, channel)
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, HistoryError>>,
    ) -> Result<T, HistoryError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(HistoryError::Unavailable(format!(
                "redis {what} timed out after {} ms",
                self.op_timeout.as_millis()
            ))),
        }
    }

    fn lane(&self, key: &str) -> Lane {
        if let Some(l) = self.lanes.get(key) {
            return Arc::clone(&l);
        }
        if self.lanes.len() >= MAX_LANES {
            self.lanes.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(&self.lanes.entry(key.to_owned()).or_default())
    }

    async fn read(
        &self,
        app_id: &str,
        channel: &str,
        mode: &str,
        from: String,
        count: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let keys = self.keys(app_id, channel);
        let mut conn = self.conn.clone();
        let fresh = fresh_stream_id();
        let count = u64::try_from(count)
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        let reply: Value = self
            .timed("read", async {
                self.read_script
                    .key(&keys.meta)
                    .key(&keys.stream)
                    .arg(&fresh)
                    .arg(self.retention.max_messages)
                    .arg(millis(self.retention.max_age))
                    .arg(mode)
                    .arg(&from)
                    .arg(count)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        parse_page(reply, mode != "before")
    }
}

#[async_trait]
impl HistoryStore for RedisHistoryStore {
    async fn append(
        &self,
        app_id: &str,
        channel: &str,
        message_id: &str,
        dedup_window: Duration,
        frame_for: &(dyn for<'s> Fn(&'s str, u64) -> Bytes + Send + Sync),
    ) -> Result<Appended, HistoryError> {
        let keys = self.keys(app_id, channel);
        let dedup_key = keys.dedup(message_id);
        let window = if message_id.is_empty() {
            0
        } else {
            window_millis(dedup_window)
        };
        let lane = self.lane(&keys.meta);
        let mut conn = self.conn.clone();
        self.timed("append", async {
            let mut known = lane.lock().await;
            for _ in 0..MAX_APPEND_ATTEMPTS {
                let fresh = fresh_stream_id();
                let (sid, serial) = known.clone().unwrap_or_else(|| (fresh.clone(), 0));
                let next = serial
                    .checked_add(1)
                    .ok_or_else(|| corrupt("serial space exhausted"))?;
                let frame = frame_for(&sid, next);
                let reply: Value = self
                    .append_script
                    .key(&keys.meta)
                    .key(&keys.stream)
                    .key(&dedup_key)
                    .arg(&sid)
                    .arg(serial)
                    .arg(&fresh)
                    .arg(frame.as_ref())
                    .arg(message_id)
                    .arg(window)
                    .arg(self.retention.max_messages)
                    .arg(millis(self.retention.max_age))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let reply = array(reply)?;
                let [status, got_sid, got_serial] = reply.as_slice() else {
                    return Err(corrupt("malformed append reply"));
                };
                let (status, got_sid, got_serial) =
                    (text(status)?, text(got_sid)?, number(got_serial)?);
                match status.as_str() {
                    "ok" => {
                        *known = Some((got_sid.clone(), got_serial));
                        return Ok(Appended {
                            stream_id: got_sid,
                            serial: got_serial,
                            duplicate: false,
                        });
                    }
                    // The head is unknown from a duplicate: keep the prediction as it was.
                    "dup" => {
                        return Ok(Appended {
                            stream_id: got_sid,
                            serial: got_serial,
                            duplicate: true,
                        })
                    }
                    "stale" => *known = Some((got_sid, got_serial)),
                    other => return Err(corrupt(format_args!("unknown append status {other:?}"))),
                }
            }
            Err(HistoryError::Unavailable(format!(
                "append to {channel} lost {MAX_APPEND_ATTEMPTS} races in a row"
            )))
        })
        .await
    }

    async fn head(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError> {
        let page = self.read(app_id, channel, "head", String::new(), 0).await?;
        Ok(StreamPosition {
            stream_id: page.stream_id,
            serial: page.newest_serial,
        })
    }

    async fn read_after(
        &self,
        app_id: &str,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        // Entry ids are `n-1`, so `n-0` is an inclusive start at serial n. Past u64::MAX there
        // is nothing to read.
        match after.checked_add(1) {
            Some(first) => {
                self.read(app_id, channel, "after", format!("{first}-0"), limit)
                    .await
            }
            None => self.read(app_id, channel, "head", String::new(), 0).await,
        }
    }

    async fn read_before(
        &self,
        app_id: &str,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        match before {
            None => {
                self.read(app_id, channel, "before", "+".to_owned(), limit)
                    .await
            }
            Some(0) => self.read(app_id, channel, "head", String::new(), 0).await,
            Some(b) => {
                self.read(app_id, channel, "before", format!("{}-1", b - 1), limit)
                    .await
            }
        }
    }

    async fn reset(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError> {
        let keys = self.keys(app_id, channel);
        let lane = self.lane(&keys.meta);
        let mut conn = self.conn.clone();
        let fresh = fresh_stream_id();
        self.timed("reset", async {
            let mut known = lane.lock().await;
            let sid: String = self
                .reset_script
                .key(&keys.meta)
                .key(&keys.stream)
                .arg(&fresh)
                .arg(millis(self.retention.max_age))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            *known = Some((sid.clone(), 0));
            Ok(StreamPosition {
                stream_id: sid,
                serial: 0,
            })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_injective_and_share_a_hash_tag() {
        let a = HistoryKeys::new("p:", "a:b", "c");
        let b = HistoryKeys::new("p:", "a", "b:c");
        assert_ne!(a.meta, b.meta);
        assert_eq!(a.meta, "p:{h:3:a:b:1:c}:meta");
        assert_eq!(a.stream, "p:{h:3:a:b:1:c}:s");
        assert_eq!(a.dedup("m"), "p:{h:3:a:b:1:c}:mid:m");
        // A channel name cannot forge another channel's suffix.
        let c = HistoryKeys::new("p:", "a", "c}:mid:q");
        assert_ne!(c.meta, HistoryKeys::new("p:", "a", "c").dedup("q}:meta"));
    }

    #[test]
    fn entry_ids_map_to_serials() {
        assert_eq!(id_serial("42-1").unwrap(), 42);
        assert!(id_serial("42-0").is_err());
        assert!(id_serial("x-1").is_err());
    }

    #[test]
    fn windows_round_up_and_clamp() {
        assert_eq!(window_millis(Duration::ZERO), 0);
        assert_eq!(window_millis(Duration::from_micros(1)), 1);
        assert_eq!(window_millis(Duration::MAX), MAX_MS);
        assert_eq!(millis(Duration::MAX), MAX_MS);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn pages_must_be_contiguous() {
        let entry = |n: u64| {
            vec![
                bulk(&format!("{n}-1")),
                bulk("f"),
                bulk("m"),
                bulk("5"),
                bulk("1"),
            ]
        };
        let reply = |entries: Vec<u64>| {
            let mut v = vec![bulk("sid"), bulk("9"), bulk("3")];
            for e in entries {
                v.extend(entry(e));
            }
            Value::Array(v)
        };
        assert_eq!(
            parse_page(reply(vec![3, 4, 5]), true)
                .unwrap()
                .messages
                .len(),
            3
        );
        assert_eq!(
            parse_page(reply(vec![5, 4, 3]), false)
                .unwrap()
                .messages
                .len(),
            3
        );
        assert!(parse_page(reply(vec![3, 5]), true).is_err());
        assert!(parse_page(reply(vec![3, 4]), false).is_err());
        assert!(parse_page(reply(vec![10]), true).is_err());
        assert!(parse_page(reply(vec![2]), true).is_err());
    }
}
