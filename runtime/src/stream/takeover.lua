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
-- start after it), ARGV[5] the most entries to take, ARGV[6] the most
-- pending entries to look at (the caller's own among them)
-- Returns {cursor, claimed, attempts, deleted}: where the next page starts
-- (false after the last), the entries claimed (as XCLAIM returns them), the
-- attempt number of each (its delivery count now), and the ids of entries
-- that were pending but are deleted from the stream (XCLAIM has just
-- dropped them from the group).
local s, g, me = KEYS[1], ARGV[1], ARGV[2]
local take, look = tonumber(ARGV[5]), tonumber(ARGV[6])
local rows = redis.call('XPENDING', s, g, 'IDLE', ARGV[3], ARGV[4], '+', look)
local ids, counts, last = {}, {}, nil
for _, row in ipairs(rows) do
  if #ids == take then
    break
  end
  last = row[1]
  if row[2] ~= me then
    ids[#ids + 1] = row[1]
    counts[row[1]] = row[4]
  end
end
-- More may follow the last row looked at if that was not the last row
-- XPENDING gave, or XPENDING gave as many as it was asked for.
local cursor = false
if last and (last ~= rows[#rows][1] or #rows == look) then
  cursor = '(' .. last
end
if #ids == 0 then
  return { cursor, {}, {}, {} }
end
-- Within the script nothing else runs: every id listed is still idle
-- enough (XPENDING checked it; a minimum of 0 here, so that a clock stepped
-- back meanwhile cannot fail it), and one not returned is deleted from the
-- stream.
local claimed = redis.call('XCLAIM', s, g, me, 0, unpack(ids))
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
return { cursor, claimed, attempts, deleted }
