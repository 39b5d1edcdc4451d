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

-- include: fetch_lib.lua

return fetch(KEYS, ARGV)
