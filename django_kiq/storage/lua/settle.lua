-- settle.lua: take jobs out of a process's in-progress list and put each where it belongs.
--
-- KEYS[1]      the in-progress list (kiq:wip:<identity>)
-- KEYS[2]      guard key: the owner's heartbeat hash (<identity>); checked only if ARGV[1] == "1"
-- KEYS[3]      the `queues` set
-- KEYS[4..]    4 keys per entry: destination (a queue list, or the retry/dead/schedule set),
--              the job's unique lock (kiq:unique:<digest>), its checkpoint (kiq:cursor:<jid>)
--              and a counter (stat:cancelled / stat:expired); unused ones repeat KEYS[1]
-- ARGV[1]      "1": do nothing and return {-1} if the guard key exists (the owner is alive)
-- ARGV[2]      dead set cap (DEAD_MAX_JOBS); ARGV[3] dead set cutoff score (now - DEAD_TIMEOUT)
-- ARGV[4]      E, the number of entries; the batch groups of done jobs follow them (below)
-- ARGV[5..]    6 values per entry: kind, old payload, new payload, score or queue name,
--              the jid whose unique lock to release ("" keeps it), and cleanup flags:
--              "c" deletes the checkpoint, "n" increments the counter, and the workflow
--              cleanups whose keys and values follow the entry's own (docs/workflows.md):
--   "r" writes the job's result record: KEYS +2: the result hash, its "done" list;
--       ARGV +3+2F: TTL seconds, "1" to push to the done list (the job finished), F, then
--       F field/value pairs
--   "b" counts the job's outcome in its batch: KEYS +1+4L: the schedule set, then per batch
--       level (its own batch, its parent...) hash, pending, failed and dead sets;
--       ARGV +4: outcome ('s' succeeded, 'f' failed, 'd' died), the jid, L, the batch TTL
--   kind "x" = discard, "q" = RPUSH to the head of queue, "l" = LPUSH to the tail of queue,
--   "z" = ZADD with score, "d" = ZADD to dead with score, then trim dead to the cap and cutoff.
--
-- Then the batch groups: done jobs whose only cleanup is their success in a batch, the bulk
-- of a batch's drain, in a leaner format (half the Lua work per job of an entry's):
--   KEYS +1        the schedule set (once, if there is a group), then per group 4L keys: per
--                  batch level, hash, pending, failed and dead sets
--   ARGV +1        G, the number of groups; per group: L, the batch TTL, M, then M pairs of
--                  (old payload, jid)
-- Each job of a group is LREMed; the jids of those removed are counted together, one SREM for
-- all and one completion check per group (batch_succeed_many), still in this one atomic step.
--
-- An entry acts only if its old payload was still in the in-progress list (LREM returned 1), so
-- two processes settling the same orphan, or a retried call, never move a job twice. The
-- cleanups happen in the same step as the move: a job's outcome, the release of its unique lock
-- and the end of its checkpoint, its result and its batch's counters and callbacks are one
-- change, whatever crashes when (batch_lib.lua says why callbacks fire exactly once).
-- Successes in the same batch are counted together at the end of the call (one SREM for
-- all: batch_succeed_many), still in this one atomic step.
-- Returns one 0/1 flag per entry, then per job of the groups in order, or {-1} when the guard
-- stopped it.

-- include: batch_lib.lua

if ARGV[1] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1}
end

local wip = KEYS[1]
local flags = {}
local succeeded, groups, now = {}, {}, nil
local base, k, i = 4, 3, 0
local entries = tonumber(ARGV[4])
while i < entries do
  i = i + 1
  local kind, old, new, extra = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local lock_jid, cleanup = ARGV[base + 5], ARGV[base + 6]
  local dest, lock, cursor, counter = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  base, k = base + 6, k + 4
  local result, batch = nil, nil
  if string.find(cleanup, 'r', 1, true) then
    local nf = tonumber(ARGV[base + 3])
    result = {KEYS[k + 1], KEYS[k + 2], ARGV[base + 1], ARGV[base + 2], base + 3, nf}
    base, k = base + 3 + 2 * nf, k + 2
  end
  if string.find(cleanup, 'b', 1, true) then
    local levels = {}
    for j = 1, tonumber(ARGV[base + 3]) do
      local at = k + 1 + (j - 1) * 4
      levels[j] = {KEYS[at + 1], KEYS[at + 2], KEYS[at + 3], KEYS[at + 4]}
    end
    batch = {KEYS[k + 1], ARGV[base + 1], ARGV[base + 2], levels, ARGV[base + 4]}
    base, k = base + 4, k + 1 + 4 * #levels
  end
  local removed = redis.call('LREM', wip, -1, old)
  flags[i] = removed
  if removed == 1 then
    if kind == 'q' then
      redis.call('SADD', KEYS[3], extra)
      redis.call('RPUSH', dest, new)
    elseif kind == 'l' then
      redis.call('SADD', KEYS[3], extra)
      redis.call('LPUSH', dest, new)
    elseif kind == 'z' then
      redis.call('ZADD', dest, extra, new)
    elseif kind == 'd' then
      redis.call('ZADD', dest, extra, new)
      redis.call('ZREMRANGEBYSCORE', dest, '-inf', '(' .. ARGV[3])
      redis.call('ZREMRANGEBYRANK', dest, 0, -(tonumber(ARGV[2]) + 1))
    end
    -- A lock is released only by the job that holds it: a newer job may own it by now.
    if lock_jid ~= '' and redis.call('GET', lock) == lock_jid then
      redis.call('DEL', lock)
    end
    if string.find(cleanup, 'c', 1, true) then
      redis.call('DEL', cursor)
    end
    if string.find(cleanup, 'n', 1, true) then
      redis.call('INCR', counter)
    end
    if result then
      local fields = {}
      for j = 1, 2 * result[6] do fields[j] = ARGV[result[5] + j] end
      if #fields > 0 then redis.call('HSET', result[1], unpack(fields)) end
      redis.call('EXPIRE', result[1], result[3])
      if result[4] == '1' then
        redis.call('RPUSH', result[2], '1')
        redis.call('EXPIRE', result[2], result[3])
      end
    end
    if batch then
      now = now or batch_now()
      if batch[2] == 's' then
        local levels = batch[4]
        local group = succeeded[levels[1][1]]
        if not group then
          group = {levels, batch[1], batch[5], {}}
          succeeded[levels[1][1]] = group
          groups[#groups + 1] = group
        end
        group[4][#group[4] + 1] = batch[3]
      else
        batch_apply(batch[4], 1, batch[3], batch[2], batch[1], now, batch[5])
      end
    end
  end
end
-- The batch groups (done jobs counted as succeeded in their batch).
local ngroups = tonumber(ARGV[base + 1]) or 0
local sched = KEYS[k + 1]
base, k = base + 1, k + 1
for _ = 1, ngroups do
  local nlevels, ttl, m = tonumber(ARGV[base + 1]), ARGV[base + 2], tonumber(ARGV[base + 3])
  local levels = {}
  for j = 1, nlevels do
    levels[j] = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}
    k = k + 4
  end
  base = base + 3
  local members = {}
  for _ = 1, m do
    i = i + 1
    local removed = redis.call('LREM', wip, -1, ARGV[base + 1])
    flags[i] = removed
    if removed == 1 then members[#members + 1] = ARGV[base + 2] end
    base = base + 2
  end
  if #members > 0 then
    now = now or batch_now()
    local group = succeeded[levels[1][1]]
    if group then  -- entries of the same batch: counted with these, in one SREM
      for _, member in ipairs(members) do group[4][#group[4] + 1] = member end
    else
      batch_succeed_many(levels, members, sched, now, ttl)
    end
  end
end
for _, group in ipairs(groups) do
  batch_succeed_many(group[1], group[4], group[2], now, group[3])
end
return flags
