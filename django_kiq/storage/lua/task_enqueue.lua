-- task_enqueue.lua: write a django.tasks result record and push its job, in one step.
--
-- KEYS[1]   the result hash (kiq:result:<id>, the record every result-keeping job has)
-- KEYS[2]   the `queues` set
-- KEYS[3]   the destination: the queue list (queue:<name>) for mode "q", the schedule set for "z"
-- ARGV[1]   mode: "q" = place in the queue by priority, "z" = ZADD to the schedule set
-- ARGV[2]   the job payload
-- ARGV[3]   mode "q": the job's priority (integer, -100..100); mode "z": its run-at score
-- ARGV[4]   the queue name (SADD to `queues` in mode "q")
-- ARGV[5]   TTL of the result hash, seconds
-- ARGV[6]   at most this many waiting jobs are read to find the job's place (mode "q")
-- ARGV[7..] field, value pairs of the result hash
--
-- The record exists exactly when the job was pushed: a failed call writes neither.
--
-- Placement (mode "q"): the worker takes jobs from the right end of the list (the head), and
-- ordinary pushes go to the left end (the tail). A job's priority is its payload's `priority`
-- field; a job without one (every @job, every Ruby job) counts as 0. The job goes behind every
-- waiting job of equal or higher priority and ahead of every job of lower priority, so a list
-- whose jobs were all placed this way runs highest priority first, oldest first within a
-- priority. Priority > 0 is placed by walking from the head over the jobs that outrank or tie
-- it; priority <= 0 by walking from the tail over the jobs it outranks. Either walk stops after
-- ARGV[6] jobs and places the job there.

local CHUNK = 100

local function priority(raw)
  local ok, job = pcall(cjson.decode, raw)
  if ok and type(job) == 'table' and type(job['priority']) == 'number' then
    return job['priority']
  end
  return 0
end

local function place(list, raw, p, limit)
  local len = redis.call('LLEN', list)
  local seen = 0
  local last = nil
  if p > 0 then
    -- From the head (index len-1) towards the tail, over jobs that outrank or tie this one.
    while seen < len and seen < limit do
      local chunk = redis.call('LRANGE', list, -(seen + CHUNK), -(seen + 1))
      for i = #chunk, 1, -1 do
        if priority(chunk[i]) < p then
          if seen == 0 then return redis.call('RPUSH', list, raw) end
          return redis.call('LINSERT', list, 'AFTER', chunk[i], raw)
        end
        last = chunk[i]
        seen = seen + 1
        if seen >= limit then break end
      end
    end
    if seen >= len or last == nil then return redis.call('LPUSH', list, raw) end
    return redis.call('LINSERT', list, 'BEFORE', last, raw)
  end
  -- From the tail (index 0) towards the head, over jobs this one outranks.
  while seen < len and seen < limit do
    local chunk = redis.call('LRANGE', list, seen, seen + CHUNK - 1)
    for i = 1, #chunk do
      if priority(chunk[i]) >= p then
        if seen == 0 then return redis.call('LPUSH', list, raw) end
        return redis.call('LINSERT', list, 'BEFORE', chunk[i], raw)
      end
      last = chunk[i]
      seen = seen + 1
      if seen >= limit then break end
    end
  end
  if seen >= len or last == nil then return redis.call('RPUSH', list, raw) end
  return redis.call('LINSERT', list, 'AFTER', last, raw)
end

local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))

if ARGV[1] == 'z' then
  return redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[4])
return place(KEYS[3], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6]))
