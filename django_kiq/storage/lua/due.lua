-- due.lua: claim jobs whose time has come from the schedule or retry set.
--
-- KEYS[1]   the sorted set (schedule or retry); score = run-at, epoch seconds
-- KEYS[2]   the claiming process's scheduler in-progress list (kiq:wip:<identity>|sched)
-- ARGV[1]   "" to judge by Redis's own clock (TIME; what workers send), or a time in epoch
--           seconds standing in for it (tests)
-- ARGV[2]   at most this many jobs
--
-- Due members move atomically from the set into the in-progress list, so two pollers never claim
-- the same job and a crash before the job reaches its queue leaves it recoverable (the orphan
-- recovery pushes it to its queue). "Due" is decided by Redis's clock, not the worker's: a worker
-- whose clock runs ahead must not start jobs early (TIME before a write is allowed: scripts are
-- replicated by their effects). The caller then runs client middleware and settles each job onto
-- its queue with settle.lua. Returns the claimed payloads, oldest first.

local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local jobs = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(jobs) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('LPUSH', KEYS[2], job)
end
return jobs
