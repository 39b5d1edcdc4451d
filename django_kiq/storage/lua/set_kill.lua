-- set_kill.lua: move chosen members of the schedule or retry set to the dead set.
--
-- KEYS[1]      the sorted set the jobs leave (schedule or retry)
-- KEYS[2]      the dead set
-- ARGV[1]      now: the death time, used as the dead score
-- ARGV[2]      dead set cap (DEAD_MAX_JOBS); ARGV[3] dead set cutoff score (now - DEAD_TIMEOUT)
-- ARGV[4..]    members to kill (exact bytes), kept unchanged
--
-- A member moves only if ZREM removed it (never in both sets, never lost). The dead set is then
-- trimmed: scores below the cutoff go, then all but the newest DEAD_MAX_JOBS members.
-- Returns how many members moved.

local moved = 0
for i = 4, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
end
return moved
