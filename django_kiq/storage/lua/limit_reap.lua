-- limit_reap.lua: release every concurrent lease a dead process still holds.
--
-- KEYS[1]  the process's heartbeat hash (<identity>): if it exists the process is alive
-- KEYS[2]  the process's ZSET of limiters it holds leases in (kiq:limits:held:<identity>)
-- KEYS[3..] the lease ZSETs of those limiters (kiq:limit:<name>)
-- ARGV[1]  the lease member prefix of the process: "<identity>|"
--
-- Called by orphan recovery once the heartbeat expired, so a dead holder's slots come back at
-- once instead of after lock_timeout. Atomic with the liveness check: a process that beats
-- again in between keeps its leases. A lease set holds at most `size` live members (plus
-- expired ones not yet pruned), so the scan is short.
-- Returns the number of leases released, or -1 when the process turned out to be alive.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local prefix = ARGV[1]
local released = 0
for i = 3, #KEYS do
  for _, lease in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if string.sub(lease, 1, #prefix) == prefix then
      released = released + redis.call('ZREM', KEYS[i], lease)
    end
  end
end
redis.call('DEL', KEYS[2])
return released
