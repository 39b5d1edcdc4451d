-- cluster_unregister.lua: a process leaves, in Redis Cluster mode (unregister.lua's twin).
--
-- KEYS[1] processes set; KEYS[2] the process hash (<identity>); KEYS[3] its work hash;
-- KEYS[4] its scheduler in-progress lane; KEYS[5] the in-progress registry hash;
-- KEYS[6] the set of queues it has in-progress lanes in (kiq:wip:<identity>:queues)
-- ARGV[1] the identity; ARGV[2] "1": do nothing and return -1 if the process hash exists;
-- ARGV[3] how many jobs its per-queue lanes still hold (counted by the caller: those lanes
--         live in their queues' slots, out of this script's reach)
--
-- All keys are in the global slot. The registry entry and the lane list go only when nothing
-- is left anywhere, so a live process recovers leftovers once the heartbeat expired.
-- Returns the number of jobs left behind.

if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
local left = redis.call('LLEN', KEYS[4]) + tonumber(ARGV[3])
if left == 0 then
  redis.call('HDEL', KEYS[5], ARGV[1])
  redis.call('DEL', KEYS[6])
end
return left
