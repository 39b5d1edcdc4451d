-- fetch.lua: acknowledge finished jobs and reliably fetch new ones, in one round trip.
--
-- KEYS[1]      the process's in-progress list (kiq:wip:<identity>)
-- KEYS[2]      the set of paused queue names (kiq:paused)
-- KEYS[3..N]   queue lists (queue:<name>) in the order to try them (strict, or shuffled by weight)
-- ARGV[1]      how many jobs to move at most
-- ARGV[2]      how many acknowledgements follow
-- ARGV[3..]    payloads of finished jobs, removed from the in-progress list, then the queue
--              names of KEYS[3..N], in the same order
--
-- Each fetched job moves with LMOVE from the right (oldest) end of its queue to the in-progress
-- list, so a job is always in exactly one of the two: a crash at any point loses nothing.
-- Paused queues are skipped. Returns a flat array: the number of paused queues P, their indexes
-- (1-based into KEYS[3..]), then queue index, payload, queue index, payload, ...

local wip = KEYS[1]
local wanted = tonumber(ARGV[1])
local acks = tonumber(ARGV[2])
for i = 1, acks do
  redis.call('LREM', wip, -1, ARGV[2 + i])
end

local paused = {}
local active = {}
for k = 3, #KEYS do
  if redis.call('SISMEMBER', KEYS[2], ARGV[2 + acks + k - 2]) == 1 then
    paused[#paused + 1] = k - 2
  else
    active[#active + 1] = k
  end
end

local out = {#paused}
for _, index in ipairs(paused) do out[#out + 1] = index end
local moved = 0
for _, k in ipairs(active) do
  while moved < wanted do
    local job = redis.call('LMOVE', KEYS[k], wip, 'RIGHT', 'LEFT')
    if not job then break end
    moved = moved + 1
    out[#out + 1] = k - 2
    out[#out + 1] = job
  end
  if moved >= wanted then break end
end
return out
