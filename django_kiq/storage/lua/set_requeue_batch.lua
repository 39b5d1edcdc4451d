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
-- would change numbers and turn [] into {}). The member is readied for its queue as
-- django_kiq.payload.ready_for_queue does it, by two careful text edits:
-- * a top-level "at" is dropped (a queued job never carries it: a Ruby poller would schedule it
--   again): an `"at":<number|true|false|null>` member is cut with one neighbouring comma, and the
--   cut is kept only if the result decodes to the very same job without "at" (so a nested "at",
--   or `"at":` inside a string, can never be cut by mistake); when no cut passes, "at" stays;
-- * enqueued_at is stamped by an edit that cannot create a duplicate key: if the decoded job
--   has no top-level enqueued_at, `"enqueued_at":now,` goes right after the opening brace; if
--   it has one, the value is replaced only when the text holds exactly one `"enqueued_at":`
--   whose number equals the decoded value; otherwise enqueued_at is left as it is.
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

-- Deep equality of two decoded values; `skip` names a top-level key to ignore.
local function same(a, b, skip)
  if type(a) ~= 'table' or type(b) ~= 'table' then
    return a == b
  end
  for k, v in pairs(a) do
    if k ~= skip and not same(v, b[k]) then
      return false
    end
  end
  for k, _ in pairs(b) do
    if k ~= skip and a[k] == nil then
      return false
    end
  end
  return true
end

local MAX_CUTS = 8  -- candidate `"at":` occurrences tried per member

local function drop_at(raw, job)
  if job['at'] == nil then
    return raw
  end
  local init = 1
  for _ = 1, MAX_CUTS do
    local first, key_end = string.find(raw, '"at"%s*:%s*', init)
    if not first then
      return raw
    end
    init = key_end + 1
    local _, value_end = string.find(raw, '^-?[%d%.eE+-]+', key_end + 1)
    for _, word in ipairs({'true', 'false', 'null'}) do
      if not value_end and string.sub(raw, key_end + 1, key_end + #word) == word then
        value_end = key_end + #word
      end
    end
    local edited
    if value_end then
      local _, comma_end = string.find(raw, '^%s*,%s*', value_end + 1)
      local before = string.find(string.sub(raw, 1, first - 1), ',%s*$')
      if comma_end then
        edited = string.sub(raw, 1, first - 1) .. string.sub(raw, comma_end + 1)
      elseif before then
        edited = string.sub(raw, 1, before - 1) .. string.sub(raw, value_end + 1)
      end
    end
    if edited then
      local ok, again = pcall(cjson.decode, edited)
      if ok and type(again) == 'table' and again['at'] == nil and same(again, job, 'at') then
        return edited
      end
    end
  end
  return raw
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
    redis.call('LPUSH', key, stamp(drop_at(raw, job), job))
    moved = moved + 1
  end
end
return {moved, skipped, false}
