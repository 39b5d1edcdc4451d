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
-- ARGV[7]   the cleanups of a job that keeps a result or is in a batch, "" or any of "r" and
--           "b", their values from ARGV[8]: settle.lua's layout (workflow_lib.lua reads it)
--
-- Recording it first means a worker that fetches the job anyway (it moved between the caller's
-- read and this script, or its process died and it was recovered) drops it instead of running
-- it, and a worker running it raises JobCancelled in it. A waiting member is removed, counted,
-- its unique lock released (only if this job holds the lock), its result marked cancelled and
-- its count in its batch made, all in the same step, as a worker does for a job cancelled
-- before it started.
-- Returns 1 if the waiting member was removed, else 0.

-- include: batch_lib.lua
-- include: workflow_lib.lua

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
  local result, batch = workflow_read(KEYS, ARGV, ARGV[7] or '', 5, 7)
  if result then
    workflow_write_result(result)
  end
  if batch then
    batch_apply(batch.levels, 1, batch.member, batch.outcome, batch.sched, batch_now(),
                batch.ttl)
  end
end
return removed
