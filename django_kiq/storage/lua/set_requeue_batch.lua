-- set_requeue_batch.lua: move the first members of a sorted set onto their queues ("retry all").
--
-- KEYS[1]      the sorted set the jobs leave (schedule, retry or dead)
-- KEYS[2]      the `queues` set (every queue a job lands on is registered there)
-- KEYS[3..]    queue lists (queue:<name>), one per name in ARGV[4..], in the same order
-- ARGV[1]      now, as the JSON number text to write into enqueued_at
-- ARGV[2]      rank of the first member to look at (the malformed members skipped so far)
-- ARGV[3]      batch size: at most this many members are looked at per call
-- ARGV[4..]    the queue names of KEYS[3..]
--
-- Each member moves atomically (ZREM then LPUSH to the tail of its queue). cjson only *reads*
-- the member, to learn its queue ("default" if missing); the bytes are never re-encoded (cjson
-- would change numbers and turn [] into {}). enqueued_at is stamped by a text edit that cannot
-- create a duplicate key: if the decoded job has no top-level enqueued_at, `"enqueued_at":now,`
-- goes right after the opening brace; if it has one, the value is replaced only when the text
-- holds exactly one `"enqueued_at":` whose number equals the decoded value; otherwise the member
-- moves unchanged. Other fields (e.g. "at") are left as they are.
-- Malformed members (not a JSON object with a non-empty "class" string and an "args" table) are skipped
-- and stay in place. A job naming a queue that is not in KEYS stops the batch before it, and its
-- name is returned so the caller can call again with that key: every key comes through KEYS.
-- Returns {moved, skipped, unknown queue name or false}.

local now = ARGV[1]
local queue_keys = {}
for i = 4, #ARGV do
  queue_keys[ARGV[i]] = KEYS[i - 1]
end

local function stamp(raw, job)
  local value = job['enqueued_at']
  if value == nil then
    local _, brace = string.find(raw, '^%s*{')
    return string.sub(raw, 1, brace) .. '"enqueued_at":' .. now .. ',' .. string.sub(raw, brace + 1)
  end
  if type(value) ~= 'number' then
    return raw
  end
  local _, key_end = string.find(raw, '"enqueued_at"%s*:%s*')
  if not key_end or string.find(raw, '"enqueued_at"%s*:', key_end + 1) then
    return raw
  end
  local num_start, num_end = string.find(raw, '^-?[%d%.eE+-]+', key_end + 1)
  if not num_start or tonumber(string.sub(raw, num_start, num_end)) ~= value then
    return raw
  end
  return string.sub(raw, 1, key_end) .. now .. string.sub(raw, num_end + 1)
end

local first = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[3]) - 1)
local moved, skipped = 0, 0
for _, raw in ipairs(members) do
  local ok, job = pcall(cjson.decode, raw)
  if not ok or type(job) ~= 'table' or type(job['class']) ~= 'string' or job['class'] == ''
      or type(job['args']) ~= 'table' or string.find(raw, '^%s*{') == nil then
    skipped = skipped + 1
  else
    local queue = job['queue']
    if type(queue) ~= 'string' or queue == '' then
      queue = 'default'
    end
    local key = queue_keys[queue]
    if not key then
      return {moved, skipped, queue}
    end
    redis.call('ZREM', KEYS[1], raw)
    redis.call('SADD', KEYS[2], queue)
    redis.call('LPUSH', key, stamp(raw, job))
    moved = moved + 1
  end
end
return {moved, skipped, false}
