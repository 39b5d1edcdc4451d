-- batch_lib.lua: batch bookkeeping shared by settle.lua and batch_seal.lua. Not a script of
-- its own: Storage._script pastes it where a script says "-- include: batch_lib.lua".
--
-- A batch "level" is {hash, pending set, failed set, dead set} (kiq:batch:<bid>[:pending|
-- :failed|:dead]); levels[1] is a job's own batch, levels[2] its parent, and so on: every key
-- is passed in KEYS by the caller, nothing is built here. Members are jids, or "b:<bid>" for
-- a child batch (which counts as one job of its parent).
--
-- Exactly once, whatever runs twice: a member counts as succeeded only when SREM removes it
-- from pending (1 only once), failures and deaths are set members (idempotent), and each
-- callback is pushed only by the step whose HSETNX sets its "fired_<which>" flag. Callbacks
-- (stored as ready job payloads in "cb_<which>" when the batch was sealed) go to the schedule
-- set, due now; the poller moves them to their queue. A child's callbacks join its parent's
-- pending set in the same step, so the parent completes only after they ran.

local function batch_fire(levels, i, which, sched, now)
  local h = levels[i][1]
  if redis.call('HSETNX', h, 'fired_' .. which, now) == 0 then return end
  local raw = redis.call('HGET', h, 'cb_' .. which)
  if not raw then return end
  local parent = levels[i + 1]
  if parent then
    redis.call('SADD', parent[2], redis.call('HGET', h, 'cbjid_' .. which))
    redis.call('HINCRBY', parent[1], 'total', 1)
  end
  redis.call('ZADD', sched, now, raw)
end

-- After a change to levels[i]: fire the callbacks now due. Returns what the batch's parent
-- should count for it ('s' succeeded, 'f' failed, 'd' died) or nil for no change.
local function batch_check(levels, i, died, sched, now, ttl)
  local lv = levels[i]
  local h = lv[1]
  local up = nil
  if died and redis.call('HSETNX', h, 'died_at', now) == 1 then
    batch_fire(levels, i, 'death', sched, now)
    up = 'd'
  end
  if redis.call('HGET', h, 'sealed') ~= '1' then return up end
  local pending = redis.call('SCARD', lv[2])
  if pending == redis.call('SCARD', lv[3])
      and redis.call('HSETNX', h, 'complete_at', now) == 1 then
    batch_fire(levels, i, 'complete', sched, now)
    for j = 1, 4 do redis.call('EXPIRE', lv[j], ttl) end
    if pending > 0 and up == nil then up = 'f' end
  end
  if pending == 0 and redis.call('HSETNX', h, 'success_at', now) == 1 then
    batch_fire(levels, i, 'success', sched, now)
    up = 's'
  end
  return up
end

-- Count `outcome` ('s', 'f' failed and will retry or not, 'd' died) for `member` of
-- levels[start], then pass the batch's own change up to its parent, and so on.
local function batch_apply(levels, start, member, outcome, sched, now, ttl)
  for i = start, #levels do
    local lv = levels[i]
    if outcome == 's' then
      if redis.call('SREM', lv[2], member) == 0 then return end
      redis.call('SREM', lv[3], member)
    else
      if redis.call('SISMEMBER', lv[2], member) == 0 then return end
      redis.call('SADD', lv[3], member)
      if outcome == 'd' then redis.call('SADD', lv[4], member) end
    end
    outcome = batch_check(levels, i, outcome == 'd', sched, now, ttl)
    if outcome == nil or levels[i + 1] == nil then return end
    member = 'b:' .. redis.call('HGET', lv[1], 'bid')
  end
end

-- Count `members` (jids of levels[1]) as succeeded: batch_apply(levels, 1, m, 's') for each,
-- with one SREM per 1,000 and one check. The end state and the callbacks are the same (a
-- member leaves pending once, whichever SREM removes it); the settle step of a fetcher pass
-- that finished many jobs of one batch pays a few commands for all of them, not per job.
local function batch_succeed_many(levels, members, sched, now, ttl)
  local lv = levels[1]
  local removed = 0
  for j = 1, #members, 1000 do
    local last = math.min(j + 999, #members)
    removed = removed + redis.call('SREM', lv[2], unpack(members, j, last))
    redis.call('SREM', lv[3], unpack(members, j, last))
  end
  if removed == 0 then return end
  local up = batch_check(levels, 1, false, sched, now, ttl)
  if up ~= nil and levels[2] then
    batch_apply(levels, 2, 'b:' .. redis.call('HGET', lv[1], 'bid'), up, sched, now, ttl)
  end
end

local function batch_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
