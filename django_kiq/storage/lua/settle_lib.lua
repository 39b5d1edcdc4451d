-- settle_lib.lua: settle.lua's step as a function, settle(KEYS, ARGV), so that a script can run
-- it on part of its keys and arguments (settle_fetch.lua). Not a script of its own: included
-- after "-- include: batch_lib.lua" and "-- include: workflow_lib.lua" (it calls both). settle.lua documents the
-- keys, the arguments and what it returns.

local function settle(KEYS, ARGV)
  if ARGV[1] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
    return {-1}
  end

  local wip = KEYS[1]
  local flags = {}
  local succeeded, groups, now = {}, {}, nil
  local base, k, i = 4, 3, 0
  local entries = tonumber(ARGV[4])
  while i < entries do
    i = i + 1
    local kind, old, new, extra = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
    local lock_jid, cleanup = ARGV[base + 5], ARGV[base + 6]
    local dest, lock, cursor, counter = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    base, k = base + 6, k + 4
    local result, batch
    result, batch, k, base = workflow_read(KEYS, ARGV, cleanup, k, base)
    local removed = redis.call('LREM', wip, -1, old)
    flags[i] = removed
    if removed == 1 then
      if kind == 'q' then
        redis.call('SADD', KEYS[3], extra)
        redis.call('RPUSH', dest, new)
      elseif kind == 'l' then
        redis.call('SADD', KEYS[3], extra)
        redis.call('LPUSH', dest, new)
      elseif kind == 'z' then
        redis.call('ZADD', dest, extra, new)
      elseif kind == 'd' then
        redis.call('ZADD', dest, extra, new)
        redis.call('ZREMRANGEBYSCORE', dest, '-inf', '(' .. ARGV[3])
        redis.call('ZREMRANGEBYRANK', dest, 0, -(tonumber(ARGV[2]) + 1))
      end
      -- A lock is released only by the job that holds it: a newer job may own it by now.
      if lock_jid ~= '' and redis.call('GET', lock) == lock_jid then
        redis.call('DEL', lock)
      end
      if string.find(cleanup, 'c', 1, true) then
        redis.call('DEL', cursor)
      end
      if string.find(cleanup, 'n', 1, true) then
        redis.call('INCR', counter)
      end
      if result then
        workflow_write_result(result)
      end
      if batch then
        now = now or batch_now()
        if batch.outcome == 's' then
          local levels = batch.levels
          local group = succeeded[levels[1][1]]
          if not group then
            group = {levels, batch.sched, batch.ttl, {}}
            succeeded[levels[1][1]] = group
            groups[#groups + 1] = group
          end
          group[4][#group[4] + 1] = batch.member
        else
          batch_apply(batch.levels, 1, batch.member, batch.outcome, batch.sched, now, batch.ttl)
        end
      end
    end
  end
  -- The batch groups (done jobs counted as succeeded in their batch).
  local ngroups = tonumber(ARGV[base + 1]) or 0
  local sched = KEYS[k + 1]
  base, k = base + 1, k + 1
  for _ = 1, ngroups do
    local nlevels, ttl, m = tonumber(ARGV[base + 1]), ARGV[base + 2], tonumber(ARGV[base + 3])
    local levels = {}
    for j = 1, nlevels do
      levels[j] = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}
      k = k + 4
    end
    base = base + 3
    local members = {}
    for _ = 1, m do
      i = i + 1
      local removed = redis.call('LREM', wip, -1, ARGV[base + 1])
      flags[i] = removed
      if removed == 1 then members[#members + 1] = ARGV[base + 2] end
      base = base + 2
    end
    if #members > 0 then
      now = now or batch_now()
      local group = succeeded[levels[1][1]]
      if group then  -- entries of the same batch: counted with these, in one SREM
        for _, member in ipairs(members) do group[4][#group[4] + 1] = member end
      else
        batch_succeed_many(levels, members, sched, now, ttl)
      end
    end
  end
  for _, group in ipairs(groups) do
    batch_succeed_many(group[1], group[4], group[2], now, group[3])
  end
  return flags
end
