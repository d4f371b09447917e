-- Trims a stream to its bound without removing what a consumer group still
-- needs. The caller found the groups' floor: the first entry some group has
-- not read or still has pending (entries before it every group is done
-- with). Nothing at or after the floor is ever removed.
-- KEYS[1] the stream
-- ARGV[1] the floor id, or "+" when no group reads the stream
-- ARGV[2] max_len, or "" for none
-- ARGV[3] the age cut ("<ms>-0": entries before it are too old), or ""
-- ARGV[4] "1" when a group is known to need more than max_len entries (cut
--         at the floor without counting what lies beyond it)
-- Returns {entries removed, entries left, 1 if the floor kept the stream over its bound else 0}.

-- Whether stream id `a` comes before `b` ("+" comes after everything).
local function before(a, b)
  if b == '+' then return a ~= '+' end
  if a == '+' then return false end
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end

local stream, floor = KEYS[1], ARGV[1]
local removed, held = 0, 0

if ARGV[3] ~= '' then
  local cut = ARGV[3]
  if before(floor, cut) then
    cut = floor
  end
  if cut ~= '+' then
    removed = removed + redis.call('XTRIM', stream, 'MINID', cut)
  end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first and before(first[1], ARGV[3]) then
    held = 1
  end
end

if ARGV[2] ~= '' then
  local max = tonumber(ARGV[2])
  if redis.call('XLEN', stream) > max then
    if floor == '+' then
      removed = removed + redis.call('XTRIM', stream, 'MAXLEN', max)
    elseif ARGV[4] ~= '1' and #redis.call('XRANGE', stream, floor, '+', 'COUNT', max + 1) <= max then
      -- At most max entries from the floor on: the oldest ones beyond max
      -- are all before the floor.
      removed = removed + redis.call('XTRIM', stream, 'MAXLEN', max)
    else
      removed = removed + redis.call('XTRIM', stream, 'MINID', floor)
      held = 1
    end
  end
end

return { removed, redis.call('XLEN', stream), held }
