-- set_kill.lua: move chosen members of the schedule or retry set to the dead set.
--
-- KEYS[1]      the sorted set the jobs leave (schedule or retry)
-- KEYS[2]      the dead set
-- KEYS[3]      the schedule set (batch callbacks are pushed there, due now)
-- KEYS[4..]    per member: its lock and its batch levels' keys (set_lib.lua)
-- ARGV[1]      now: the death time, used as the dead score
-- ARGV[2]      dead set cap (DEAD_MAX_JOBS); ARGV[3] dead set cutoff score (now - DEAD_TIMEOUT)
-- ARGV[4..]    5 values per member (set_lib.lua); the bytes are kept unchanged
--
-- A member moves only if ZREM removed it (never in both sets, never lost). A killed job is dead:
-- its unique lock is released and, for a job of a batch, it counts as dead there (on_death),
-- in the same step. The dead set is then trimmed: scores below the cutoff go, then all but the
-- newest DEAD_MAX_JOBS members.
-- Returns how many members moved.

-- include: batch_lib.lua
-- include: set_lib.lua

local moved, now = 0, nil
local k, a = 4, 4
while a <= #ARGV do
  local m
  m, k, a = set_member(k, a)
  if redis.call('ZREM', KEYS[1], m.raw) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], m.raw)
    moved = moved + 1
    if #m.levels > 0 then now = now or batch_now() end
    set_leave(m, KEYS[3], now)
  end
end
if moved > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
end
return moved
