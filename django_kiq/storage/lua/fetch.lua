-- fetch.lua: acknowledge finished jobs and reliably fetch new ones, in one round trip.
--
-- KEYS[1]      the process's in-progress list (kiq:wip:<identity>)
-- KEYS[2..N]   queue lists (queue:<name>) in the order to try them (strict, or shuffled by weight)
-- ARGV[1]      how many jobs to move at most
-- ARGV[2]      how many acknowledgements follow
-- ARGV[3..]    payloads of finished jobs, removed from the in-progress list
--
-- Each fetched job moves with LMOVE from the right (oldest) end of its queue to the in-progress
-- list, so a job is always in exactly one of the two: a crash at any point loses nothing.
-- Returns a flat array: queue index (1-based into KEYS[2..]), payload, queue index, payload, ...

local wip = KEYS[1]
local wanted = tonumber(ARGV[1])
local acks = tonumber(ARGV[2])
for i = 1, acks do
  redis.call('LREM', wip, -1, ARGV[2 + i])
end

local out = {}
local moved = 0
for k = 2, #KEYS do
  while moved < wanted do
    local job = redis.call('LMOVE', KEYS[k], wip, 'RIGHT', 'LEFT')
    if not job then break end
    moved = moved + 1
    out[#out + 1] = k - 1
    out[#out + 1] = job
  end
  if moved >= wanted then break end
end
return out
