-- due.lua: claim jobs whose time has come from the schedule or retry set.
--
-- KEYS[1]   the sorted set (schedule or retry); score = run-at, epoch seconds
-- KEYS[2]   the claiming process's in-progress list (kiq:wip:<identity>)
-- ARGV[1]   now (epoch seconds); ARGV[2] at most this many jobs
--
-- Due members move atomically from the set into the in-progress list, so two pollers never claim
-- the same job and a crash before the job reaches its queue leaves it recoverable (the orphan
-- recovery pushes it to its queue). The caller then runs client middleware and settles each job
-- onto its queue with settle.lua. Returns the claimed payloads, oldest first.

local jobs = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(jobs) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('LPUSH', KEYS[2], job)
end
return jobs
