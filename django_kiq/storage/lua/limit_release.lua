-- limit_release.lua: give a concurrent lease back, counting the blocks it served.
--
-- KEYS[1]  the limiter's lease ZSET (kiq:limit:<name>)
-- KEYS[2]  its meta HASH (kiq:limit:<name>:meta): the counter "acquired"
-- ARGV[1]  the lease: "<identity>|<thread>|<token>"
-- ARGV[2]  blocks its process ran on the lease after the first (a kept lease reused without a
--          round trip, django_kiq/limit_leases.py): added to "acquired", so the admin's count
--          of uses is exact once the lease is back
--
-- One step, so the count cannot be lost between the two writes; a meta hash that expired is
-- not recreated (it would have no TTL).
-- Returns 1 if the lease was still held, 0 if it had expired or was reset or reaped.

local released = redis.call('ZREM', KEYS[1], ARGV[1])
local reused = tonumber(ARGV[2]) or 0
if reused > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'acquired', reused)
end
return released
