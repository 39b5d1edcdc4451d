-- cancel.lua: record a cancellation, and remove the job from where it waits if it is there.
--
-- KEYS[1]   the recent cancellations (kiq:cancelled, a ZSET of "<jid> <who>" by sequence)
-- KEYS[2]   the sequence counter (kiq:cancelled:seq)
-- KEYS[3]   where the job waits: a queue list or the schedule/retry set (KEYS[1] if unknown)
-- KEYS[4]   the job's unique lock (KEYS[1] if none)
-- KEYS[5]   stat:cancelled
-- KEYS[6..] the cleanups' keys (ARGV[7])
-- ARGV[1]   the jid; ARGV[2] who cancelled it (a user name, or "")
-- ARGV[3]   "list", "zset", "" (not known to be waiting) or "gone" (removed already, by the
--           caller: Redis Cluster's queue step); ARGV[4] the exact member
-- ARGV[5]   how many recent cancellations to keep
-- ARGV[6]   "1" to record the cancellation, "0" to only remove the waiting member
-- ARGV[7]   the cleanups of a job that keeps a result or is in a batch, in settle.lua's layout
--           (storage.workflow_settle_args): "" or any of "r" (KEYS: the result hash and its
--           "done" list; ARGV from 8: TTL, finished "1"/"0", F, then F field/value pairs) and
--           "b" (KEYS: the schedule set, then 4 keys per batch level; ARGV: the outcome, the
--           member, the number of levels, the batch TTL)
--
-- Recording it first means a worker that fetches the job anyway (it moved between the caller's
-- read and this script, or its process died and it was recovered) drops it instead of running
-- it, and a worker running it raises JobCancelled in it. A waiting member is removed, counted,
-- its unique lock released (only if this job holds the lock), its result marked cancelled and
-- its count in its batch made, all in the same step, as a worker does for a job cancelled
-- before it started.
-- Returns 1 if the waiting member was removed, else 0.

-- include: batch_lib.lua

if ARGV[6] == '1' then
  local seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], seq, ARGV[1] .. ' ' .. ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
end
local removed = 0
if ARGV[3] == 'list' then
  removed = redis.call('LREM', KEYS[3], 1, ARGV[4])
elseif ARGV[3] == 'zset' then
  removed = redis.call('ZREM', KEYS[3], ARGV[4])
elseif ARGV[3] == 'gone' then
  removed = 1
end
if removed == 1 then
  redis.call('INCR', KEYS[5])
  if KEYS[4] ~= KEYS[1] and redis.call('GET', KEYS[4]) == ARGV[1] then
    redis.call('DEL', KEYS[4])
  end
  local cleanups, k, a = ARGV[7] or '', 6, 8
  if string.find(cleanups, 'r', 1, true) then
    local ttl, nf = ARGV[a], tonumber(ARGV[a + 2])
    local fields = {}
    for j = 1, 2 * nf do fields[j] = ARGV[a + 2 + j] end
    if #fields > 0 then redis.call('HSET', KEYS[k], unpack(fields)) end
    redis.call('EXPIRE', KEYS[k], ttl)
    if ARGV[a + 1] == '1' then
      redis.call('RPUSH', KEYS[k + 1], '1')
      redis.call('EXPIRE', KEYS[k + 1], ttl)
    end
    k, a = k + 2, a + 3 + 2 * nf
  end
  if string.find(cleanups, 'b', 1, true) then
    local levels = {}
    for j = 1, tonumber(ARGV[a + 2]) do
      local at = k + 1 + (j - 1) * 4
      levels[j] = {KEYS[at], KEYS[at + 1], KEYS[at + 2], KEYS[at + 3]}
    end
    batch_apply(levels, 1, ARGV[a + 1], ARGV[a], KEYS[k], batch_now(), ARGV[a + 3])
  end
end
return removed
