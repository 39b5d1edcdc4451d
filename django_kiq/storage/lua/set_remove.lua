-- set_remove.lua: delete chosen members of a queue or a job set, releasing their unique locks
-- and counting their batch jobs as dead.
--
-- KEYS[1]      the queue list (queue:<name>) or sorted set (schedule, retry, dead) they leave,
--              (unused for "gone")
-- KEYS[2]      the schedule set (batch callbacks are pushed there, due now)
-- KEYS[3..]    per member: its lock and its batch levels' keys (set_lib.lua)
-- ARGV[1]      "list", "zset", or "gone": members that left already in a server-side bulk
--              step (set aside by set_clear.lua, moved by set_kill_batch.lua), so only what
--              leaves with them happens (an aside copy stays whole: its ranks stay stable for
--              the caller's paged scan)
-- ARGV[2..]    5 values per member (set_lib.lua)
--
-- The API's and the admin's Delete (issue 11: a deleted unique job releases its lock; issue 13:
-- a deleted job of a batch counts as dead in it). The removal, the release and the count are
-- one step, so no crash leaves a lock without its job or a batch waiting for a job that is
-- gone; they happen only when the member was really removed here (someone else may have
-- moved it first).
-- Returns how many members were removed.

-- include: batch_lib.lua
-- include: set_lib.lua

local removed, now = 0, nil
local k, a = 3, 2
while a <= #ARGV do
  local m
  m, k, a = set_member(k, a)
  local n = 1
  if ARGV[1] == 'list' then
    n = redis.call('LREM', KEYS[1], 1, m.raw)
  elseif ARGV[1] == 'zset' then
    n = redis.call('ZREM', KEYS[1], m.raw)
  end
  if n == 1 then
    removed = removed + 1
    if #m.levels > 0 then now = now or batch_now() end
    set_leave(m, KEYS[2], now)
  end
end
return removed
