-- fetch_lib.lua: fetch.lua's step as a function, fetch(KEYS, ARGV), so that a script can run
-- it on part of its keys and arguments (settle_fetch.lua). Not a script of its own: included
-- where a script says "-- include: fetch_lib.lua". fetch.lua documents the keys, the arguments
-- and what it returns.

local function fetch(KEYS, ARGV)
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
end
