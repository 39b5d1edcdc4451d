-- task_release.lua: an attempt of a django.tasks task was cut off (its worker stopped and
-- pushed the job back to its queue): its result reads READY again while the job waits.
--
-- KEYS[1]   the result hash (kiq:task:<id>)
-- ARGV[1]   the worker id of the attempt that was cut off (host:pid:thread)
-- ARGV[2]   TTL of the result hash, seconds
--
-- Acts only if the record says RUNNING and its last attempt (`worker:<attempts>`) is ARGV[1]:
-- a record another worker has started since, one the attempt finished before the process
-- exited, or an expired one (never recreated here) is left alone. One script, so a worker
-- starting the task between the check and the write cannot be overwritten.
-- Returns 1 if the record went back to READY, else 0.

local key = KEYS[1]
if redis.call('HGET', key, 'status') ~= 'RUNNING' then
  return 0
end
local n = redis.call('HGET', key, 'attempts')
if not n or redis.call('HGET', key, 'worker:' .. n) ~= ARGV[1] then
  return 0
end
redis.call('HSET', key, 'status', 'READY')
redis.call('EXPIRE', key, tonumber(ARGV[2]))
return 1
