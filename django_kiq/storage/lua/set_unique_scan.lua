-- set_unique_scan.lua: the members of one page of an aside copy that are unique jobs or jobs
-- of a batch (what must go with them: a lock, a batch count).
--
-- KEYS[1]      an aside copy left by set_clear.lua (kiq:trash:<token>): a list or a sorted set
--              nobody else writes, so ranks are stable between calls
-- ARGV[1]      "list" or "zset"
-- ARGV[2]      first rank of the page; ARGV[3] page size
-- ARGV[4..]    the bytes such a member holds ('"kiq_unique"', '"bid"'): any one will do
--
-- Filtering happens here, so only the few such jobs travel to the caller, not the million
-- members of a cleared queue. Plain substring search (no JSON decoding in Lua).
-- Returns {members read, matching member, ...}.

local first = tonumber(ARGV[2])
local last = first + tonumber(ARGV[3]) - 1
local members
if ARGV[1] == 'list' then
  members = redis.call('LRANGE', KEYS[1], first, last)
else
  members = redis.call('ZRANGE', KEYS[1], first, last)
end
local out = {#members}
for _, member in ipairs(members) do
  for i = 4, #ARGV do
    if string.find(member, ARGV[i], 1, true) then
      out[#out + 1] = member
      break
    end
  end
end
return out
