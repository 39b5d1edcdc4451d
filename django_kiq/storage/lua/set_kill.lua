-- set_kill.lua: move chosen members of the schedule or retry set to the dead set.
--
-- KEYS[1]      the sorted set the jobs leave (schedule or retry)
-- KEYS[2]      the dead set
-- KEYS[3..]    one per member: its unique job's lock (kiq:unique:<digest>), KEYS[1] if none
-- ARGV[1]      now: the death time, used as the dead score
-- ARGV[2]      dead set cap (DEAD_MAX_JOBS); ARGV[3] dead set cutoff score (now - DEAD_TIMEOUT)
-- ARGV[4..]    2 values per member: its exact bytes (kept unchanged), and the jid whose lock
--              to release ("" for none)
--
-- A member moves only if ZREM removed it (never in both sets, never lost). A killed job is dead:
-- its unique lock is released in the same step, if that job still holds it. The dead set is
-- then trimmed: scores below the cutoff go, then all but the newest DEAD_MAX_JOBS members.
-- Returns how many members moved.

local moved = 0
for i = 3, #KEYS do
  local member, jid, lock = ARGV[2 * i - 2], ARGV[2 * i - 1], KEYS[i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], member)
    moved = moved + 1
    if jid ~= '' and lock ~= KEYS[1] and redis.call('GET', lock) == jid then
      redis.call('DEL', lock)
    end
  end
end
if moved > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
end
return moved
