-- workflow_lib.lua: what ends with a job for its workflow (docs/workflows.md), as settle.lua and
-- cancel.lua take it: its result record ("r") and its count in its batch ("b"), in the layout
-- storage.BatchOps.workflow_settle_args writes (settle.lua documents it). Not a script of its
-- own: pasted by "-- include: workflow_lib.lua" (after batch_lib.lua, whose batch_apply counts
-- what workflow_read returns).

-- The cleanups `flags` names, read from KEYS[k + 1...] and ARGV[a + 1...]: the result write
-- and the batch count (nil when not asked for), then the next k and a.
local function workflow_read(KEYS, ARGV, flags, k, a)
  local result, batch = nil, nil
  if string.find(flags, 'r', 1, true) then
    local nf = tonumber(ARGV[a + 3])
    local fields = {}
    for j = 1, 2 * nf do fields[j] = ARGV[a + 3 + j] end
    result = {key = KEYS[k + 1], done = KEYS[k + 2], ttl = ARGV[a + 1],
              finished = ARGV[a + 2], fields = fields}
    k, a = k + 2, a + 3 + 2 * nf
  end
  if string.find(flags, 'b', 1, true) then
    local levels = {}
    for j = 1, tonumber(ARGV[a + 3]) do
      local at = k + 1 + (j - 1) * 4
      levels[j] = {KEYS[at + 1], KEYS[at + 2], KEYS[at + 3], KEYS[at + 4]}
    end
    batch = {sched = KEYS[k + 1], outcome = ARGV[a + 1], member = ARGV[a + 2],
             levels = levels, ttl = ARGV[a + 4]}
    k, a = k + 1 + 4 * #levels, a + 4
  end
  return result, batch, k, a
end

-- Write a result record workflow_read returned; a finished job's "done" list wakes waiters.
local function workflow_write_result(r)
  if #r.fields > 0 then redis.call('HSET', r.key, unpack(r.fields)) end
  redis.call('EXPIRE', r.key, r.ttl)
  if r.finished == '1' then
    redis.call('RPUSH', r.done, '1')
    redis.call('EXPIRE', r.done, r.ttl)
  end
end
