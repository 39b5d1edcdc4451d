-- cancel.lua: record a cancellation, and remove the job from where it waits if it is there.
--
-- KEYS[1]   the recent cancellations (kiq:cancelled, a ZSET of "<jid> <who>" by sequence)
-- KEYS[2]   the sequence counter (kiq:cancelled:seq)
-- KEYS[3]   where the job waits: a queue list or the schedule/retry set (KEYS[1] if unknown)
-- KEYS[4]   the job's unique lock (KEYS[1] if none)
-- KEYS[5]   stat:cancelled
-- ARGV[1]   the jid; ARGV[2] who cancelled it (a user name, or "")
-- ARGV[3]   "list", "zset" or "" (not known to be waiting); ARGV[4] the exact member
-- ARGV[5]   how many recent cancellations to keep
-- ARGV[6]   "1" to record the cancellation, "0" to only remove the waiting member
--
-- Recording it first means a worker that fetches the job anyway (it moved between the caller's
-- read and this script, or its process died and it was recovered) drops it instead of running
-- it, and a worker running it raises JobCancelled in it. A waiting member is removed, counted
-- and its unique lock released in the same step (only if this job holds the lock).
-- Returns 1 if the waiting member was removed, else 0.

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
end
if removed == 1 then
  redis.call('INCR', KEYS[5])
  if KEYS[4] ~= KEYS[1] and redis.call('GET', KEYS[4]) == ARGV[1] then
    redis.call('DEL', KEYS[4])
  end
end
return removed
