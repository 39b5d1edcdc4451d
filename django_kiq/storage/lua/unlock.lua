-- unlock.lua: release a unique job's lock, but only if the given job still holds it.
--
-- KEYS[1]   the lock (kiq:unique:<digest>)
-- ARGV[1]   the jid that took it
--
-- A compare-and-delete: a job whose lock expired and was taken by a newer job must not release
-- the newer job's lock. Returns 1 if released, else 0.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
