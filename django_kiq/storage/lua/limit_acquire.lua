-- limit_acquire.lua: take room in a limiter, on Redis's clock, or say when room is expected.
--
-- KEYS[1]  the limiter's state (kiq:limit:<name>): a ZSET of leases (concurrent: member
--          "<identity>|<thread>|<token>", score = expiry ms), a HASH {w = window index,
--          n = count} (window), a ZSET of acquisitions (bucket: member = token, score = ms) or
--          a STRING, the time the bucket is empty in ms (leaky)
-- KEYS[2]  its meta HASH (kiq:limit:<name>:meta): kind, size, span, counters acquired/throttled
-- KEYS[3]  the registry ZSET of limiters (kiq:limits): name -> last use, ms
-- KEYS[4]  concurrent: the holder process's ZSET of limiters it holds leases in
--          (kiq:limits:held:<identity>, name -> latest expiry ms); other kinds repeat KEYS[1]
-- ARGV[1]  kind: "concurrent", "window", "bucket" or "leaky"
-- ARGV[2]  size; ARGV[3] span ms: lock_timeout (concurrent) or the interval (the others)
-- ARGV[4]  member: the lease (concurrent) or a unique token (bucket); "" otherwise
-- ARGV[5]  the limiter's name; ARGV[6] "1": record the use in the registry and the meta hash
-- ARGV[7]  ms a meta hash outlives its last recorded use; ARGV[8] registry horizon ms
-- ARGV[9]  concurrent: ms a lease outlives lock_timeout, the window in which its process may
--          reuse it for another block (django_kiq/limit_leases.py; "0" when it keeps none),
--          so a block on a reused lease still has lock_timeout
--
-- One script per acquisition, so the check and the take are one step however many processes
-- compete. Time comes from TIME: a worker's skewed clock cannot stretch or shrink a window.
-- The rules mirror django_kiq/limit_rules.py (concurrent, window, bucket, leaky).
-- Returns {1, 0, now} when room was taken, else {0, ms until room is expected, now}; now is
-- Redis's clock in whole ms.

local state, meta = KEYS[1], KEYS[2]
local kind, size, span = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local member, name = ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local function extend(key, ms)  -- a TTL never shortened by a later, shorter hold
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, math.ceil(ms)) end
end

local function nth_score(key, rank)
  return tonumber(redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')[2])
end

local function concurrent()
  redis.call('ZREMRANGEBYSCORE', state, '-inf', now)  -- leases past their expiry
  local held = redis.call('ZCARD', state)
  if held >= size then return nth_score(state, held - size) - now end
  local hold = span + (tonumber(ARGV[9]) or 0)
  redis.call('ZADD', state, now + hold, member)
  extend(state, hold)
  redis.call('ZADD', KEYS[4], 'GT', now + hold, name)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  extend(KEYS[4], hold)
  return 0
end

local function window()
  local w = math.floor(now / span)
  local stored = redis.call('HMGET', state, 'w', 'n')
  local n = 0
  if tonumber(stored[1]) == w then n = tonumber(stored[2]) or 0 end
  if n >= size then return (w + 1) * span - now end
  redis.call('HSET', state, 'w', w, 'n', n + 1)
  extend(state, (w + 1) * span - now + 1000)
  return 0
end

local function bucket()
  redis.call('ZREMRANGEBYSCORE', state, '-inf', now - span)
  local n = redis.call('ZCARD', state)
  if n >= size then return nth_score(state, n - size) + span - now end
  redis.call('ZADD', state, now, member)
  redis.call('PEXPIRE', state, math.ceil(span))
  return 0
end

local function leaky()
  local tat = math.max(tonumber(redis.call('GET', state)) or now, now)
  local after = tat + span / size
  if after - now > span + 0.001 then return after - now - span end
  redis.call('SET', state, string.format('%.3f', after), 'PX', math.ceil(after - now) + 1000)
  return 0
end

local rules = {concurrent = concurrent, window = window, bucket = bucket, leaky = leaky}
local wait = rules[kind]()
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], now, name)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[8]))
  redis.call('HSET', meta, 'kind', kind, 'size', size, 'span', span)
  redis.call('PEXPIRE', meta, ARGV[7])
end
if wait > 0 then
  redis.call('HINCRBY', meta, 'throttled', 1)
  return {0, math.max(1, math.ceil(wait)), math.floor(now)}
end
redis.call('HINCRBY', meta, 'acquired', 1)
return {1, 0, math.floor(now)}
