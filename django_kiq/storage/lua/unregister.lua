-- unregister.lua: a process leaves, cleanly or after its orphaned jobs were recovered.
--
-- KEYS[1] processes set; KEYS[2] the process hash (<identity>); KEYS[3] its work hash;
-- KEYS[4] its fetch in-progress list; KEYS[5] its scheduler in-progress list;
-- KEYS[6] the in-progress registry hash
-- ARGV[1] the identity; ARGV[2] "1": do nothing and return -1 if the process hash exists
--
-- The registry entry goes only when both in-progress lists are empty: if anything is left (a
-- requeue failed), the entry stays so a live process recovers it once the heartbeat expires.
-- Returns the number of jobs left behind.

if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
local left = redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5])
if left == 0 then
  redis.call('HDEL', KEYS[6], ARGV[1])
end
return left
