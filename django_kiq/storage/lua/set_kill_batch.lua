-- set_kill_batch.lua: move the first members of the schedule or retry set to the dead set.
--
-- KEYS[1]      the sorted set the jobs leave (schedule or retry)
-- KEYS[2]      the dead set
-- ARGV[1]      now: the death time, used as the dead score
-- ARGV[2]      dead set cap (DEAD_MAX_JOBS); ARGV[3] dead set cutoff score (now - DEAD_TIMEOUT)
-- ARGV[4]      batch size: at most this many members move per call
-- ARGV[5..]    the bytes a member holds when something must go with it ('"kiq_unique"',
--              '"bid"'): such members are returned, for the caller to release their locks
--              and count them in their batch (set_remove.lua "gone")
--
-- The set-wide "kill all": the caller loops until it returns fewer than the batch size, so Redis
-- is never blocked for long and no member travels to the client. Members are kept byte for byte,
-- malformed ones included. The dead set is trimmed once per batch as in set_kill.lua.
-- The caller kills those members first, each in one step with what goes with it (set_kill.lua);
-- the ones returned here arrived meanwhile.
-- Returns {how many members moved, matching member, ...}.

local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)
if #members == 0 then
  return {0}
end
local out = {#members}
for _, member in ipairs(members) do
  redis.call('ZADD', KEYS[2], ARGV[1], member)
  for i = 5, #ARGV do
    if string.find(member, ARGV[i], 1, true) then
      out[#out + 1] = member
      break
    end
  end
end
redis.call('ZREM', KEYS[1], unpack(members))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
return out
