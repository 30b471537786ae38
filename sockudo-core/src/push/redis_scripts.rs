//! The Lua scripts of `RedisPushStore`: each is one atomic step on keys of one app (one hash
//! tag, so one Redis Cluster slot).

/// KEYS: dev hash, device index, old-client-index prefix (`…:cli:`). ARGV: id, client or
/// "", body. Returns 1 when created.
pub(super) const PUT_DEVICE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local oldc = redis.call('HGET', KEYS[1] .. ':client', ARGV[1])
if oldc and oldc ~= ARGV[2] then
  redis.call('ZREM', KEYS[3] .. oldc, ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1] .. ':client', ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[3] .. ARGV[2], 0, ARGV[1])
else
  redis.call('HDEL', KEYS[1] .. ':client', ARGV[1])
end
if old then return 0 end
return 1
";

/// KEYS: dev hash, device index, client index prefix, subscriber-channels key of the device,
/// channel key prefix (`…:chan:`), channel index. ARGV: id, subscriber key. Returns 1 when
/// the device existed.
pub(super) const DELETE_DEVICE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local c = redis.call('HGET', KEYS[1] .. ':client', ARGV[1])
if c then
  redis.call('ZREM', KEYS[3] .. c, ARGV[1])
  redis.call('HDEL', KEYS[1] .. ':client', ARGV[1])
end
local chans = redis.call('ZRANGE', KEYS[4], 0, -1)
for i = 1, #chans do
  local ck = KEYS[5] .. chans[i]
  redis.call('ZREM', ck, ARGV[2])
  if redis.call('ZCARD', ck) == 0 then redis.call('ZREM', KEYS[6], chans[i]) end
end
redis.call('DEL', KEYS[4])
return 1
";

/// KEYS: channel key, subscriber-channels key, channel index. ARGV: channel, subscriber key.
pub(super) const SUBSCRIBE: &str = r"
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return redis.call('ZADD', KEYS[1], 0, ARGV[2])
";

/// KEYS as [`SUBSCRIBE`]. Returns 1 when the subscription existed.
pub(super) const UNSUBSCRIBE: &str = r"
local n = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
return n
";

/// KEYS: status hash. ARGV: retention ms, then field/value pairs. Returns {} when created,
/// else the existing hash (flat).
pub(super) const CREATE_STATUS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {}
";

/// KEYS: status hash, once-set. ARGV: once key or "", pending delta, planning_done ("" /
/// "0" / "1"), state or "", reopen ("0"/"1"), error reason or "\0none", now ms, then counter
/// name/delta pairs. Returns the hash after the update ({} when absent).
pub(super) const UPDATE_STATUS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if ARGV[1] ~= '' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return redis.call('HGETALL', KEYS[1]) end
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
end
for i = 8, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], 'c:' .. ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'pending', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'pdone', ARGV[3]) end
if ARGV[4] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'state')
  local active = {queued = true, planning = true, dispatching = true, throttled = true}
  if ARGV[5] == '1' or active[cur] then redis.call('HSET', KEYS[1], 'state', ARGV[4]) end
end
if ARGV[6] ~= '\0none' then redis.call('HSET', KEYS[1], 'err', ARGV[6]) end
local upd = tonumber(redis.call('HGET', KEYS[1], 'updated') or '0')
if tonumber(ARGV[7]) > upd then redis.call('HSET', KEYS[1], 'updated', ARGV[7]) end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS: sends hash, status hash. ARGV: shard, retention ms, devices… Returns per device 0
/// Fresh (first), 1 Fresh (again), 2 Resumed, 3 Taken; adds the firsts to `c:planned`.
pub(super) const CLAIM_SENDS: &str = r"
local mine = 'h:' .. ARGV[1]
local out = {}
local firsts = 0
for i = 3, #ARGV do
  local m = redis.call('HGET', KEYS[1], ARGV[i])
  if not m then
    redis.call('HSET', KEYS[1], ARGV[i], mine); out[#out + 1] = 0; firsts = firsts + 1
  elseif m == 'r' then
    redis.call('HSET', KEYS[1], ARGV[i], mine); out[#out + 1] = 1
  elseif m == mine then out[#out + 1] = 2
  else out[#out + 1] = 3 end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if firsts > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'c:planned', firsts)
end
return out
";

/// KEYS: sends hash, status hash. ARGV: shard, then device / outcome ('d' or 'r') / counter
/// ('' for none) triples. Returns per device 1 when changed; each changed device adds 1 to
/// its counter.
pub(super) const FINISH_SENDS: &str = r"
local mine = 'h:' .. ARGV[1]
local out = {}
local st = redis.call('EXISTS', KEYS[2]) == 1
for i = 2, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == mine then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); out[#out + 1] = 1
    if st and ARGV[i + 2] ~= '' then redis.call('HINCRBY', KEYS[2], 'c:' .. ARGV[i + 2], 1) end
  else out[#out + 1] = 0 end
end
return out
";

/// KEYS: index, provider index prefix, bodies hash. ARGV: id, provider, record, now ms.
/// The oldest entries (by id, i.e. by time) whose expiry passed are dropped first.
pub(super) const ADD_DEAD_LETTER: &str = r"
local old = redis.call('ZRANGEBYLEX', KEYS[1], '-', '+', 'LIMIT', 0, 100)
for i = 1, #old do
  local rec = redis.call('HGET', KEYS[3], old[i])
  local exp = rec and tonumber(string.match(rec, '^([^|]*)|'))
  if rec and exp and exp > tonumber(ARGV[4]) then break end
  if rec then
    local p = string.match(rec, '^[^|]*|([^|]*)|')
    if p then redis.call('ZREM', KEYS[2] .. p, old[i]) end
  end
  redis.call('HDEL', KEYS[3], old[i])
  redis.call('ZREM', KEYS[1], old[i])
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[2] .. ARGV[2], 0, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
";

/// KEYS: index, provider index prefix, bodies hash. ARGV: id. Returns the record or false.
pub(super) const TAKE_DEAD_LETTER: &str = r"
local rec = redis.call('HGET', KEYS[3], ARGV[1])
if not rec then return false end
local p = string.match(rec, '^[^|]*|([^|]*)|')
if p then redis.call('ZREM', KEYS[2] .. p, ARGV[1]) end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return rec
";
