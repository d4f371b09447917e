-- Takes over entries abandoned by other consumers: XAUTOCLAIM, but sparing
-- the caller's own. An entry pending with the caller and idle that long is
-- one it is still handling (its delivery slow to get the CPU: a handler
-- demoted to idle priority on a busy machine) or one whose read reply was
-- lost, which the caller takes back by its own path. XAUTOCLAIM would claim
-- those too, and count a delivery each time although none happened: an
-- entry still in hand would run out of attempts without being tried.
-- KEYS[1] the stream
-- ARGV[1] the group, ARGV[2] the caller (consumer name), ARGV[3] the least
-- idle time in ms, ARGV[4] where to start (an id, or '(' and an id to
-- start after it), ARGV[5] the most entries to look at
-- Returns {next, claimed, attempts, deleted}: where the next page starts
-- (false after the last), the entries claimed (as XCLAIM returns them), the
-- attempt number of each (its delivery count now), and the ids of entries
-- that were pending but are deleted from the stream (XCLAIM has just
-- dropped them from the group).
local s, g, me, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[5])
local rows = redis.call('XPENDING', s, g, 'IDLE', idle, ARGV[4], '+', count)
local ids, counts = {}, {}
for _, row in ipairs(rows) do
  if row[2] ~= me then
    ids[#ids + 1] = row[1]
    counts[row[1]] = row[4]
  end
end
local next = false
if #rows == count then
  next = '(' .. rows[#rows][1]
end
if #ids == 0 then
  return { next, {}, {}, {} }
end
-- Within the script nothing else runs, and idle times only grow: every id
-- still qualifies, and one not returned is deleted from the stream.
local claimed = redis.call('XCLAIM', s, g, me, idle, unpack(ids))
local attempts, got = {}, {}
for i, entry in ipairs(claimed) do
  attempts[i] = counts[entry[1]] + 1
  got[entry[1]] = true
end
local deleted = {}
for _, id in ipairs(ids) do
  if not got[id] then
    deleted[#deleted + 1] = id
  end
end
return { next, claimed, attempts, deleted }
