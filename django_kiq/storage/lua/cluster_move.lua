-- cluster_move.lua: take jobs out of one in-progress lane, in Redis Cluster mode, and push
-- those still in it onto a queue of the same slot.
--
-- KEYS[1]   the in-progress lane ({kiq:q:<name>}kiq:wip:<identity>, or the poller's lane)
-- KEYS[2]   the destination queue list, in KEYS[1]'s slot; KEYS[1] when no entry pushes
-- ARGV[..]  3 values per entry: side, old payload, new payload. Side "q" RPUSHes the new
--           payload to the head of KEYS[2], "l" LPUSHes it to the tail, "x" only removes.
--
-- The second half of a settle whose other effects (retry/dead sets, locks, results, batches:
-- keys of the global slot) were made first by settle.lua on the global slot (storage/cluster.py
-- says why in that order). An entry acts only if its old payload was still in the lane (LREM
-- returned 1), so a requeue within one queue's slot happens once however often it is retried.
-- Returns one 0/1 flag per entry.

local flags = {}
for i = 1, #ARGV, 3 do
  local side, old, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local removed = redis.call('LREM', KEYS[1], -1, old)
  flags[#flags + 1] = removed
  if removed == 1 then
    if side == 'q' then
      redis.call('RPUSH', KEYS[2], new)
    elseif side == 'l' then
      redis.call('LPUSH', KEYS[2], new)
    end
  end
end
return flags
