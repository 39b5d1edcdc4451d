-- settle_fetch.lua: settle.lua then fetch.lua in one script call: a worker's pass that has done
-- jobs with cleanups to settle (most often a batch's successes) and wants more jobs.
--
-- KEYS[1..N]   settle.lua's keys, then fetch.lua's keys
-- ARGV[1]      N, how many of KEYS are settle.lua's
-- ARGV[2]      M, how many arguments settle.lua's are: ARGV[3..2+M]; fetch.lua's follow
--
-- Returns {settle.lua's answer, fetch.lua's answer}. One call rather than the two scripts
-- pipelined: half the scripts' fixed cost on both sides of the connection. Both steps run in
-- this one atomic call, so a crash still leaves every job in exactly one place.

-- include: batch_lib.lua
-- include: workflow_lib.lua
-- include: settle_lib.lua
-- include: fetch_lib.lua

local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local skeys, sargs, fkeys, fargs = {}, {}, {}, {}
for i = 1, nk do skeys[i] = KEYS[i] end
for i = nk + 1, #KEYS do fkeys[#fkeys + 1] = KEYS[i] end
for i = 1, na do sargs[i] = ARGV[2 + i] end
for i = 3 + na, #ARGV do fargs[#fargs + 1] = ARGV[i] end
return {settle(skeys, sargs), fetch(fkeys, fargs)}
