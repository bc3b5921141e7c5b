//! The Lua scripts of the Redis store: every multi-step operation is one script on one key,
//! so it is atomic and cluster-safe. The key layout they work on is described in
//! [`super`].

/// Loads a session for its browser and slides its idle expiry: min(idle, absolute deadline -
/// now). Nothing for a record whose browser session has ended (deleted unless it is kept as a
/// background grant, whose TTL then stays at `k` while `i` tracks the browser).
pub(super) const LOAD_AND_TOUCH: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'd', 'a', 'k', 'i')
if not r[1] then return false end
local now = tonumber(ARGV[2])
local abs = tonumber(r[3])
local keep = tonumber(r[4]) or 0
local idle_until = tonumber(r[5]) or abs
if keep > now then
  if abs <= now or idle_until <= now then return false end
  local until_ = math.min(now + tonumber(ARGV[1]), abs)
  redis.call('HSET', KEYS[1], 'i', until_)
  redis.call('PEXPIRE', KEYS[1], math.max(until_, keep) - now)
  return {r[1], r[2], r[3]}
end
if abs <= now then redis.call('DEL', KEYS[1]) return false end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), abs - now))
return {r[1], r[2], r[3]}
";

/// Replaces the record only if the version is unchanged; returns the new version, -1 when the
/// session is gone, -2 on a version conflict. A kept record's write moves `k` on by `kd`;
/// another record's slides its idle expiry.
pub(super) const COMPARE_AND_SET: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'a', 'k', 'kd', 'i')
if not r[1] then return -1 end
if r[1] ~= ARGV[1] then return -2 end
local now = tonumber(ARGV[4])
local abs = tonumber(r[2])
local keep = tonumber(r[3]) or 0
if abs <= now and keep <= now then redis.call('DEL', KEYS[1]) return -1 end
local v = tonumber(r[1]) + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2])
if keep > now then
  keep = now + tonumber(r[4])
  redis.call('HSET', KEYS[1], 'k', keep)
  local browser = math.min(tonumber(r[5]) or abs, abs)
  redis.call('PEXPIRE', KEYS[1], math.max(keep, browser) - now)
else
  redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[3]), abs - now))
end
return v
";

/// Keeps a record as a background grant for ARGV[1] ms from ARGV[2]; the browser's idle
/// deadline moves from the TTL into `i`. 0 when the record is gone.
pub(super) const KEEP: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'a', 'k', 'i')
if not r[1] then return 0 end
local now = tonumber(ARGV[2])
local abs = tonumber(r[2])
local keep = tonumber(r[3]) or 0
local idle_until = tonumber(r[4])
if keep <= now then idle_until = now + math.max(redis.call('PTTL', KEYS[1]), 0) end
idle_until = math.min(idle_until or abs, abs)
local k = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'k', k, 'kd', ARGV[1], 'i', idle_until)
redis.call('PEXPIRE', KEYS[1], math.max(k, idle_until) - now)
return 1
";

/// Stops keeping a record: its TTL goes back to its browser session's, or it goes now.
pub(super) const RELEASE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'a', 'k', 'i')
if not r[1] or not r[2] then return 0 end
local now = tonumber(ARGV[1])
local abs = tonumber(r[1])
local browser = math.min(tonumber(r[3]) or abs, abs)
redis.call('HDEL', KEYS[1], 'k', 'kd', 'i')
if browser <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('PEXPIRE', KEYS[1], browser - now)
return 1
";

/// Logout: a kept record loses its browser session (`a` = 0) and stays; another is deleted.
pub(super) const END_BROWSER: &str = r"
local k = tonumber(redis.call('HGET', KEYS[1], 'k')) or 0
if k > tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'a', 0)
  return 1
end
redis.call('DEL', KEYS[1])
return 0
";

/// Points a slot at a record; returns what it pointed at.
pub(super) const SET_SLOT: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
";

/// Empties a slot, only if it points at ARGV[2] when that is given.
pub(super) const CLEAR_SLOT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[2] ~= '' and current ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
";

/// Creates a session at version 1 with its TTL in one step.
pub(super) const CREATE: &str = r"
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1], 'a', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Extends the lock's TTL only while `token` owns it.
pub(super) const EXTEND_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lock only while `token` owns it, so a holder whose lock expired and was taken by
/// another replica cannot release that replica's lock.
pub(super) const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Records one more failed refresh: the wait doubles from ARGV[1] ms up to ARGV[2] ms; returns
/// it. The count survives the wait (key kept ARGV[4] ms) so consecutive failures keep doubling.
pub(super) const RECORD_FAILURE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local wait = math.min(tonumber(ARGV[1]) * 2 ^ (n - 1), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[3]) + wait)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return wait
";

/// Milliseconds left of the current back-off, 0 when none.
pub(super) const BACKOFF_LEFT: &str = r"
local u = redis.call('HGET', KEYS[1], 'until')
if not u then return 0 end
local left = tonumber(u) - tonumber(ARGV[1])
if left > 0 then return left end
return 0
";
