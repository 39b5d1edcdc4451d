-- unique_push.lua: take a unique job's lock and enqueue (or schedule) the job, in one step.
--
-- KEYS[1]   the lock (kiq:unique:<digest>)
-- KEYS[2]   the `queues` set (registered for a queue push)
-- KEYS[3]   the destination: the queue list (queue:<name>) or the schedule set
-- ARGV[1]   "q" to LPUSH onto the queue, "z" to ZADD to the schedule set
-- ARGV[2]   the job's jid (the lock's value: who holds it)
-- ARGV[3]   the lock's TTL in milliseconds (unique_for, plus the delay of a scheduled job)
-- ARGV[4]   the payload
-- ARGV[5]   the queue name ("q") or the score, epoch seconds ("z")
--
-- The lock and the push are one change: a crash leaves either both or neither, never a lock
-- without its job (which would refuse every later enqueue until the TTL) or a second job.
-- Returns {1} when pushed, {0, <jid of the holder>} when another job holds the lock.

local holder = redis.call('GET', KEYS[1])
if holder then
  return {0, holder}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[1] == 'q' then
  redis.call('SADD', KEYS[2], ARGV[5])
  redis.call('LPUSH', KEYS[3], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
end
return {1}
