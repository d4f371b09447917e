-- Counts the entries of a stream that were removed before a consumer group
-- read them (by an XTRIM, an XADD MAXLEN or an XDEL of another program's:
-- Sluice's own trim never passes what a group has not read), and records
-- the count so that each removal is told once, whichever host asks.
--
-- Redis counts every entry ever added to the stream (entries-added) and,
-- while it can tell, every entry the group has read (entries-read). An
-- entry added and neither read by the group nor still in the stream after
-- the group's last read one was removed unread:
--   removed unread = entries-added - entries-read - entries after last-delivered-id
-- Entries after the group's last read one are all of the stream when the
-- group has not yet read its first entry; otherwise they are counted, but
-- only when the group is at most ARGV[2] entries behind, so that no call
-- holds Redis long (a group further behind is counted once it catches up,
-- or falls behind the stream's first entry). Redis forgets the group's
-- count (entries-read is nil) after an XDEL of an entry it had not read, or
-- a set-back; nothing can be told then.
-- KEYS[1] the stream, KEYS[2] the record (a hash, one field per group)
-- ARGV[1] the group, ARGV[2] the most entries to count
-- Returns {status, removed unread since last recorded, in all, the group's
-- last read id, the stream's first id or ""}, status 1 when counted, 0 when
-- Redis cannot tell now (no stream, no group, no count, or too far behind).

local stream, record, group, most = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', stream) == 0 then
  return { 0, 0, 0, '', '' }
end

local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do
    f[flat[i]] = flat[i + 1]
  end
  return f
end

local g
for _, each in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local f = fields(each)
  if f['name'] == group then
    g = f
  end
end
if not g or not g['entries-read'] then
  return { 0, 0, 0, '', '' }
end

local s = fields(redis.call('XINFO', 'STREAM', stream))
local last, read, added = g['last-delivered-id'], g['entries-read'], s['entries-added']
local first = s['first-entry'] and s['first-entry'][1] or ''

-- `before` (stream ids in order) is ids.lua's, which this script is
-- prefixed with.
local after
if first == '' then
  after = 0
elseif before(last, first) then
  after = s['length']
else
  local behind = added - read
  if behind > most then
    return { 0, 0, 0, last, first }
  end
  after = #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', behind + 1)
end

local removed = added - read - after
if removed < 0 then
  removed = 0
end
local told = tonumber(redis.call('HGET', record, group) or '0')
if removed ~= told then
  redis.call('HSET', record, group, removed)
end
-- A count Redis made again (after its own was lost) starts lower; only a
-- rise is news.
local new = 0
if removed > told then
  new = removed - told
end
return { 1, new, removed, last, first }
