-- set_clear.lua: empty a queue or a job set at once by renaming it aside.
--
-- KEYS[1]      the queue list (queue:<name>) or sorted set (schedule, retry, dead) to empty
-- KEYS[2]      where its members go (kiq:trash:<token>), out of every worker's sight
-- KEYS[3]      the `queues` set (a queue is forgotten); KEYS[1] for a job set
-- ARGV[1]      "list" or "zset"
-- ARGV[2]      the queue's name ("" for a job set)
-- ARGV[3]      seconds the aside copy lives at most (a caller that dies leaves no garbage)
--
-- Clear and Delete all: the caller then reads the aside copy in pages for unique jobs, releases
-- their locks (none of those jobs can run any more, so their locks are surely stale) and drops
-- it. Renaming is O(1), so a million jobs go at once and nothing new lands in the aside copy.
-- Returns how many members the queue or set held.

local n
if ARGV[1] == 'list' then
  n = redis.call('LLEN', KEYS[1])
else
  n = redis.call('ZCARD', KEYS[1])
end
if n > 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
end
if ARGV[2] ~= '' then
  redis.call('SREM', KEYS[3], ARGV[2])
end
return n
