-- batch.lua: create a batch, add jobs to it (pushed in the same step), seal it. Any of the three.
--
-- KEYS[1..4]  the batch: hash, pending, failed and dead sets (kiq:batch:<bid>[:...])
-- KEYS[5]     the batches index (kiq:batches); KEYS[6] the `queues` set; KEYS[7] the schedule set
-- KEYS[8..]   4 keys per ancestor batch (parent first), as KEYS[1..4]; then one destination
--             key per run of jobs (its queue list, or the schedule set)
-- ARGV[1]     flags: "c" create (with "x": only if the batch does not exist, else return 0),
--             "s" seal (store the callbacks, then fire what is due)
-- ARGV[2]     number of ancestors A; ARGV[3] the batch TTL (seconds after completion)
-- ARGV[4]     F, then F field/value pairs of the hash ("c": bid, description, created_at...)
-- then        C, then C triples: which ("success", "complete", "death"), the callback's jid,
--             its payload as it waits in the schedule set ("s")
-- then        R, then R runs of jobs in their order: "q", the queue name, N, then N pairs
--             (jid, payload) pushed to that queue; or "z", "", N, then N triples (jid, score,
--             payload) added to the schedule set
--
-- Creating a child batch makes it a member of its parent ("b:<bid>") in the same step; each
-- job joins the pending set in the same step as its push, so a crash never leaves a job
-- outside its batch or a member without its job. A batch completes only once sealed (the
-- `with batch()` block ended): its first jobs may finish before the last one is added.
-- Returns 1, or 0 when "cx" found the batch already there (nothing done).
--
-- On a single Redis, a call that only pushes jobs (every `enqueue` inside `with batch()`) runs
-- the same commands in one MULTI instead (storage/batches.py, _batch_push): nothing here
-- decides them, and the script's copy of each argument into Lua doubled the push's cost. This
-- script pushes when the call also creates or seals, and on Redis Cluster (through outboxes).

-- include: batch_lib.lua

local flags = ARGV[1]
local nanc, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local levels = {{KEYS[1], KEYS[2], KEYS[3], KEYS[4]}}
for j = 1, nanc do
  local at = 7 + (j - 1) * 4
  levels[j + 1] = {KEYS[at + 1], KEYS[at + 2], KEYS[at + 3], KEYS[at + 4]}
end
local h, pending = KEYS[1], KEYS[2]
local a = 4
local nf = tonumber(ARGV[a])
local fields = {}
for j = 1, 2 * nf do fields[j] = ARGV[a + j] end
a = a + 2 * nf + 1
local nc = tonumber(ARGV[a])
local callbacks_at = a
a = a + 3 * nc + 1
local nruns = tonumber(ARGV[a])

if string.find(flags, 'c', 1, true) then
  if string.find(flags, 'x', 1, true) and redis.call('EXISTS', h) == 1 then
    return 0
  end
  redis.call('HSET', h, unpack(fields))
  redis.call('HSETNX', h, 'total', 0)
  redis.call('EXPIRE', h, ttl)
  redis.call('ZADD', KEYS[5], redis.call('HGET', h, 'created_at'), redis.call('HGET', h, 'bid'))
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -100001)
  if nanc > 0 then
    redis.call('SADD', levels[2][2], 'b:' .. redis.call('HGET', h, 'bid'))
    redis.call('HINCRBY', levels[2][1], 'total', 1)
  end
end

-- The jobs, run by run, 1,000 at a time: their jids join pending in one SADD, a queue run's
-- payloads are pushed in one LPUSH (which pushes its values one after the other, as that many
-- LPUSHes would), its queue name added to `queues` once.
local dest = 7 + 4 * nanc
local nj = 0
for r = 1, nruns do
  local kind, where, n = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local key = KEYS[dest + r]
  a = a + 3
  if kind == 'q' then redis.call('SADD', KEYS[6], where) end
  local done = 0
  while done < n do
    local m = math.min(1000, n - done)
    local ids, values = {}, {}
    if kind == 'q' then
      for i = 1, m do
        ids[i], values[i] = ARGV[a + 1], ARGV[a + 2]
        a = a + 2
      end
      redis.call('LPUSH', key, unpack(values))
    else
      for i = 1, m do
        ids[i] = ARGV[a + 1]
        redis.call('ZADD', key, ARGV[a + 2], ARGV[a + 3])
        a = a + 3
      end
    end
    redis.call('SADD', pending, unpack(ids))
    done = done + m
  end
  nj = nj + n
end
if nj > 0 then
  redis.call('HINCRBY', h, 'total', nj)
  redis.call('EXPIRE', pending, ttl)
end

if string.find(flags, 's', 1, true) then
  for j = 1, nc do
    local at = callbacks_at + (j - 1) * 3
    redis.call('HSET', h, 'cb_' .. ARGV[at + 1], ARGV[at + 3], 'cbjid_' .. ARGV[at + 1], ARGV[at + 2])
  end
  redis.call('HSET', h, 'sealed', '1')
  redis.call('EXPIRE', h, ttl)
  local now = batch_now()
  local up = batch_check(levels, 1, false, KEYS[7], now, ttl)
  if up and levels[2] then
    batch_apply(levels, 2, 'b:' .. redis.call('HGET', h, 'bid'), up, KEYS[7], now, ttl)
  end
end
return 1
