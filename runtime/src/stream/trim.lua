-- Trims a stream to its bound without removing what a consumer group still
-- needs. The floor is found here, in the same atomic step as the trim, so
-- that a group made or set back meanwhile cannot be trimmed past: it is the
-- first entry some group has not read or still has pending, and nothing at
-- or after it is ever removed. For each group that is the earlier of its
-- oldest pending entry and the entry after its last delivered one (a group
-- set back with XGROUP SETID, or a replica promoted behind, reads again from
-- there, whatever it still has pending). Ages are measured by Redis's clock.
-- KEYS[1] the stream
-- ARGV[1] max_len, or "" for none
-- ARGV[2] max_age_ms, or "" for none
-- Returns {entries removed, entries left, 1 if a group kept the stream over
-- its bound else 0, that group or "", 1 if the call did only part of the
-- work and another goes on else 0}.

-- Stream ids are compared and stepped with ids.lua's `before` and
-- `next_id`, which this script is prefixed with.

local stream = KEYS[1]
if redis.call('XLEN', stream) == 0 then
  return { 0, 0, 0, '' }
end

-- The floor, the group holding it, and the most entries one group still
-- needs at least (its lag plus its pending entries; all of them when its
-- lag is unknown, after deletions or a set-back): the stream cannot be cut
-- below that many.
local floor, holder, needed = nil, '', 0
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local f = {}
  for i = 1, #g, 2 do
    f[g[i]] = g[i + 1]
  end
  local own = next_id(f['last-delivered-id'])
  if f['pending'] > 0 then
    local oldest = redis.call('XPENDING', stream, f['name'])[2]
    if oldest and before(oldest, own) then
      own = oldest
    end
  end
  if not floor or before(own, floor) then
    floor, holder = own, f['name']
  end
  local lag = f['lag']
  if not lag then
    needed = math.huge
  else
    needed = math.max(needed, lag + f['pending'])
  end
end

local removed, held = 0, 0

-- Cuts the stream at `cut` (entries before it go), or at the floor when
-- that comes first.
local function cut_at(cut)
  if floor and before(floor, cut) then
    cut = floor
  end
  removed = removed + redis.call('XTRIM', stream, 'MINID', cut)
end

if ARGV[2] ~= '' then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local oldest_kept = now_ms - tonumber(ARGV[2])
  if oldest_kept > 0 then
    local cut = string.format('%d', oldest_kept) .. '-0'
    cut_at(cut)
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if first and before(first[1], cut) then
      held = 1
    end
  end
end

-- How many entries one XRANGE below reads into Lua at most, and how many
-- such reads from each end one call makes at most.
local CHUNK, CHUNKS = 1000, 10

-- Whether XTRIM MAXLEN `max` removes only entries before the floor: whether
-- at most `max` entries lie at or after it, or (the same thing) at least
-- `excess`, the entries over the bound, lie before it. Both are counted at
-- once, a chunk at a time from each end, until one count settles it. So the
-- work is about twice the smaller of the two, and Lua holds one chunk at a
-- time: a few entries past the floor while the groups keep up, the few
-- entries over the bound while one lags far behind (reading everything
-- past the floor there blocked Redis for seconds on a stream of a million).
-- Both can be large (a bound set on a long stream, with an entry pending
-- in its middle): after CHUNKS reads from each end it returns nil and how
-- many of the oldest entries it found before the floor, which may go.
local function only_before_floor(max, excess)
  local ahead, from = 0, floor
  local behind, after = 0, '-'
  for _ = 1, CHUNKS do
    local want = math.min(CHUNK, max + 1 - ahead)
    local got = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
    ahead = ahead + #got
    if ahead > max then
      return false
    elseif #got < want then
      return true
    end
    from = '(' .. got[#got][1]
    want = math.min(CHUNK, excess - behind)
    got = redis.call('XRANGE', stream, after, '(' .. floor, 'COUNT', want)
    behind = behind + #got
    if behind >= excess then
      return true
    elseif #got < want then
      return false
    end
    after = '(' .. got[#got][1]
  end
  return nil, behind
end

-- 1 when the check above ran out of reads, so the stream was cut only part
-- of the way to its bound: calling again goes on.
local partial = 0

if ARGV[1] ~= '' then
  local max = tonumber(ARGV[1])
  local excess = redis.call('XLEN', stream) - max
  if excess > 0 then
    if not floor then
      removed = removed + redis.call('XTRIM', stream, 'MAXLEN', max)
    else
      local only, behind = false, 0
      if needed <= max then
        only, behind = only_before_floor(max, excess)
      end
      if only then
        removed = removed + redis.call('XTRIM', stream, 'MAXLEN', max)
      elseif only == nil then
        -- Undecided: the oldest `behind` entries lie before the floor.
        removed = removed + redis.call('XTRIM', stream, 'MAXLEN', redis.call('XLEN', stream) - behind)
        partial = 1
      else
        removed = removed + redis.call('XTRIM', stream, 'MINID', floor)
        held = 1
      end
    end
  end
end

if held == 0 then
  holder = ''
end
return { removed, redis.call('XLEN', stream), held, holder, partial }
