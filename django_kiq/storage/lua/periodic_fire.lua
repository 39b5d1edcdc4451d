-- periodic_fire.lua: enqueue one tick of a periodic (cron) entry, exactly once across processes.
--
-- KEYS[1]   the tick claim (kiq:periodic:tick:<name>:<tick>): STRING, value = winner's identity
-- KEYS[2]   the periodic state HASH (kiq:periodic); fields named by ARGV[8..11]
-- KEYS[3]   the destination queue LIST (queue:<name>)
-- KEYS[4]   the `queues` SET
-- ARGV[1]   identity of the caller (stored in the claim, for debugging)
-- ARGV[2]   claim TTL in seconds
-- ARGV[3]   the tick: its scheduled time, epoch seconds
-- ARGV[4]   queue name (added to `queues`)
-- ARGV[5]   the job payload (JSON), LPUSHed only by the winner
-- ARGV[6]   the payload's jid; ARGV[7] now (epoch seconds)
-- ARGV[8]   field: last tick handled   ARGV[9]  field: paused ("1" when paused)
-- ARGV[10]  field: last run time       ARGV[11] field: last jid
--
-- Every live worker calls this for every tick; the first to arrive wins. Two guards: the claim
-- (SET NX EX) and the last-tick field, which refuses any tick at or before the last one handled
-- even after the claim expired (clock skew between hosts, a reply lost and the call retried).
-- Claim, push and state change happen in one script, so no process can claim without pushing.
-- A paused entry's tick is claimed and recorded but not pushed, so resuming never replays it.
-- Returns 1 pushed, 0 someone else handled this tick, -1 handled but paused (nothing pushed).

local last = tonumber(redis.call('HGET', KEYS[2], ARGV[8]))
if last and last >= tonumber(ARGV[3]) then
  return 0
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[8], ARGV[3])
if redis.call('HGET', KEYS[2], ARGV[9]) == '1' then
  return -1
end
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[10], ARGV[7], ARGV[11], ARGV[6])
return 1
