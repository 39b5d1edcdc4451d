-- set_remove.lua: delete chosen members of a queue or a job set, releasing their unique locks.
--
-- KEYS[1]      the queue list (queue:<name>) or sorted set (schedule, retry, dead) they leave
-- KEYS[2..]    one per member: its unique job's lock (kiq:unique:<digest>), KEYS[1] if none
-- ARGV[1]      "list" or "zset"
-- ARGV[2..]    2 values per member: its exact bytes, and the jid whose lock to release ("")
--
-- The API's and the admin's Delete (issue 11: a deleted unique job releases its lock). The
-- removal and the release are one step, so no crash leaves a lock without its job; a lock is
-- released only if this job still holds it (a newer job may own it by now), and only when the
-- member was really removed here (someone else may have moved it first).
-- Returns how many members were removed.

local removed = 0
for i = 1, #KEYS - 1 do
  local member, jid, lock = ARGV[2 * i], ARGV[2 * i + 1], KEYS[i + 1]
  local n
  if ARGV[1] == 'list' then
    n = redis.call('LREM', KEYS[1], 1, member)
  else
    n = redis.call('ZREM', KEYS[1], member)
  end
  if n == 1 then
    removed = removed + 1
    if jid ~= '' and lock ~= KEYS[1] and redis.call('GET', lock) == jid then
      redis.call('DEL', lock)
    end
  end
end
return removed
