-- task_attempt.lua: a worker starts an attempt of a django.tasks task; returns the record.
--
-- KEYS[1]   the result hash (kiq:result:<id>, the record every result-keeping job has)
-- ARGV[1]   the worker id to append; ARGV[2] the start time (epoch seconds)
-- ARGV[3]   TTL of the result hash, seconds
-- ARGV[4..] field, value pairs to set (status, last_attempted_at, and the fields the job's
--           arguments carry, so a record that expired while the job waited is rebuilt)
--
-- Counts the attempt (`attempts`), stores the worker id as `worker:<n>`, sets `started_at` on
-- the first attempt only, and refreshes the TTL. Returns {n, HGETALL of the record}.

local key = KEYS[1]
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
redis.call('HSETNX', key, 'started_at', ARGV[2])
local n = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'worker:' .. n, ARGV[1])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return {n, redis.call('HGETALL', key)}
