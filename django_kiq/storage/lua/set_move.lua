-- set_move.lua: move chosen members of a sorted set (schedule, retry or dead) onto their queues.
--
-- KEYS[1]      the sorted set the jobs leave
-- KEYS[2]      the `queues` set (every queue a job lands on is registered there)
-- KEYS[3..]    one queue list (queue:<name>) per entry
-- ARGV[1..]    3 values per entry: old member (exact bytes in the set), new payload, queue name
--
-- An entry acts only if ZREM removed its old member, so a job is in the set or on its queue, never
-- both and never neither, and a job the poller (or another admin) took first is left alone. The
-- new payload is prepared by the caller (enqueued_at stamped, "at" dropped): JSON is never
-- re-encoded here. Jobs go to the tail (LPUSH) like any new job.
-- Returns one 0/1 flag per entry.

local flags = {}
local n = #ARGV / 3
for i = 1, n do
  local old, new, queue = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local removed = redis.call('ZREM', KEYS[1], old)
  flags[i] = removed
  if removed == 1 then
    redis.call('SADD', KEYS[2], queue)
    redis.call('LPUSH', KEYS[2 + i], new)
  end
end
return flags
