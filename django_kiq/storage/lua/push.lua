-- push.lua: enqueue jobs on one queue and register the queue, in one command.
--
-- KEYS[1]   the `queues` set
-- KEYS[2]   the queue list (queue:<name>)
-- ARGV[1]   the queue name; ARGV[2..] job payloads, oldest first
--
-- One EVALSHA instead of MULTI/SADD/LPUSH/EXEC: a single enqueue then costs what a bare LPUSH
-- costs. LPUSH of several values keeps their order (the first ends nearest the head).
-- Returns the queue's new length.

redis.call('SADD', KEYS[1], ARGV[1])
return redis.call('LPUSH', KEYS[2], unpack(ARGV, 2))
