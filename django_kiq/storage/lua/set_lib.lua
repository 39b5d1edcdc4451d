-- set_lib.lua: what leaves with a member that the API deletes or kills (set_remove.lua,
-- set_kill.lua). Not a script of its own: pasted by
-- "-- include: set_lib.lua", after "-- include: batch_lib.lua" (it calls batch_apply).
--
-- Per member, from KEYS[k]: its unique job's lock (kiq:unique:<digest>; KEYS[1] for none),
-- then 4 keys per batch level (hash, pending, failed, dead: its batch, the parent...). From
-- ARGV[a]: its exact bytes, the jid whose lock to release (""), its jid in its batch, the
-- number of levels L (0: not in a batch) and the batch TTL.
--
-- A deleted or killed job of a batch counts as dead (failures, dead, on_death; on_complete
-- if it was the last pending): batch_apply counts a member once whatever runs twice (a dead
-- member is a set member; each callback needs its HSETNX), so a job deleted twice, or a
-- retried clear, counts once.

local function set_member(k, a)
  local n = tonumber(ARGV[a + 3])
  local levels = {}
  for j = 1, n do
    local at = k + 1 + (j - 1) * 4
    levels[j] = {KEYS[at], KEYS[at + 1], KEYS[at + 2], KEYS[at + 3]}
  end
  local m = {raw = ARGV[a], lock_jid = ARGV[a + 1], jid = ARGV[a + 2], ttl = ARGV[a + 4],
             lock = KEYS[k], levels = levels}
  return m, k + 1 + 4 * n, a + 5
end

-- The member `m` left (it was really removed here): release its lock if its jid still holds
-- it (a newer job may own it by now), and count it dead in its batch.
local function set_leave(m, sched, now)
  if m.lock_jid ~= '' and m.lock ~= KEYS[1] and redis.call('GET', m.lock) == m.lock_jid then
    redis.call('DEL', m.lock)
  end
  if #m.levels > 0 then
    batch_apply(m.levels, 1, m.jid, 'd', sched, now or batch_now(), m.ttl)
  end
end
