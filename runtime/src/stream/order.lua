-- Ordering by key (stream/order.rs has the design): the functions that
-- keep one key's queue and lease. Prepended to order_take.lua and to
-- commit.lua, so that taking a key, and moving on to its next entry when
-- one is finished, are each one atomic step.
--
-- Per (group, stream, key), under a prefix P that shares the stream's slot:
--   P .. 'queue:' .. key  a list of the key's pending entry ids, in id order;
--   P .. 'lease:' .. key  the consumer serving the key, with a time to live
--                         that it renews while it does.
-- The consumer holding the lease delivers the queue's first entry, and only
-- that one; finishing it (commit.lua) removes it and hands over the next.

-- Entries found deleted from their stream while still pending, and
-- acknowledged here since there is nothing to deliver: {stream, id} each.
-- A script that returns them lets the host warn: they were neither handled
-- nor dead-lettered (an XDEL, or another program's trim).
local order_gone = {}

-- Acknowledges entry `id` of `s`, pending with group `g` but deleted from
-- the stream, and records it in `order_gone`.
local function order_drop_deleted(s, g, id)
  redis.call('XACK', s, g, id)
  order_gone[#order_gone + 1] = { s, id }
end

-- Whether entry id `a` comes before entry id `b` in their stream. An id's
-- two numbers may exceed what a Lua number holds exactly, so they are
-- compared as digits (Redis writes them without leading zeros): fewer
-- digits first, then digit by digit. (Plain finds: the commit script
-- compares ids of every run of deliveries.)
local function order_before(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if da ~= db or not da then
    return (da or 0) < (db or 0)
  end
  local ma, mb = string.sub(a, 1, da), string.sub(b, 1, db)
  if ma ~= mb then
    return ma < mb
  elseif #a ~= #b then
    return #a < #b
  end
  return a < b
end

-- Adds entry `id` to queue `q`, in its place by id, unless it is there
-- already.
local function order_insert(q, id)
  if redis.call('LPOS', q, id) then
    return
  end
  for _, queued in ipairs(redis.call('LRANGE', q, 0, -1)) do
    if order_before(id, queued) then
      redis.call('LINSERT', q, 'BEFORE', queued, id)
      return
    end
  end
  redis.call('RPUSH', q, id)
end

-- Adds entry `id` of stream `s`, just read for group `g`, to queue `q`.
-- XREADGROUP hands a group's entries out in id order, so it goes last. Ids
-- at the queue's end that are not before it were queued before the group
-- was made again or set back (XGROUP CREATE or SETID, or a group Redis
-- lost): the group delivers each of them again after this one, and they
-- come back in their place then, so they are dropped (a delivery still
-- running of one finds it gone from the queue, and the key goes on from the
-- queue's first entry). One deleted from the stream meanwhile is not
-- delivered again: if still pending, it is acknowledged, as `order_serve`
-- does. Each costs one step, once: the later entries of the same read go
-- last unchecked.
local function order_append(s, g, q, id)
  while true do
    local last = redis.call('LINDEX', q, -1)
    if not last or order_before(last, id) then
      break
    end
    redis.call('RPOP', q)
    if last ~= id and redis.call('XPENDING', s, g, last, last, 1)[1] and not redis.call('XRANGE', s, last, last)[1] then
      order_drop_deleted(s, g, last)
    end
  end
  redis.call('RPUSH', q, id)
end

-- Removes entry `id` from queue `q` (usually its first), whose first entry
-- the caller read already: `head`.
local function order_remove(q, id, head)
  if head == id then
    redis.call('LPOP', q)
  else
    redis.call('LREM', q, 1, id)
  end
end

-- The value of field `name` of `fields` (a flat list: field, value, ...).
local function order_field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- An entry's ordering key, or nil when it has none. `by` is 'field' (the
-- entry field `name`), 'data' (the top-level key `name` of the JSON in the
-- `data` field; without a `data` field, the entry's fields are its data, as
-- a handler sees them) or 'cedata' (the same, in the `data` of the
-- CloudEvent the `data` field holds). Strings are keys as they are;
-- integral numbers in decimal; booleans as true/false; anything else is no
-- key.
local function order_key(fields, by, name)
  if by == 'field' then
    return order_field(fields, name)
  end
  local data = order_field(fields, 'data')
  if not data then
    return order_field(fields, name)
  end
  local ok, doc = pcall(cjson.decode, data)
  if not ok or type(doc) ~= 'table' then
    return nil
  end
  if by == 'cedata' then
    doc = doc['data']
    if type(doc) ~= 'table' then
      return nil
    end
  end
  local v = doc[name]
  local t = type(v)
  if t == 'string' then
    return v
  elseif t == 'number' then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format('%d', v)
    end
    return string.format('%.17g', v)
  elseif t == 'boolean' then
    return tostring(v)
  end
  return nil
end

-- Gives consumer `me` the first entry of queue `q` to deliver, setting its
-- lease `l` for `ttl` ms, and returns {stream, id, fields, attempt, key}.
-- `counted`: a takeover (after a restart, or from a host presumed dead),
-- which counts as a delivery, as XAUTOCLAIM's would, so that an entry that
-- kills its host each time still runs out of attempts; otherwise a hand-over
-- (JUSTID: no delivery is counted, as none happened). Drops entries that are
-- no longer pending or no longer in the stream. With the queue empty, gives
-- the lease up and returns nil.
local function order_serve(s, g, me, q, l, key, ttl, counted)
  while true do
    local id = redis.call('LINDEX', q, 0)
    if not id then
      if redis.call('GET', l) == me then
        redis.call('DEL', l)
      end
      return nil
    end
    local row = redis.call('XPENDING', s, g, id, id, 1)[1]
    local entry = nil
    if row and counted then
      entry = redis.call('XCLAIM', s, g, me, 0, id)[1]
    elseif row then
      entry = redis.call('XRANGE', s, id, id)[1]
      if entry and row[2] ~= me then
        redis.call('XCLAIM', s, g, me, 0, id, 'JUSTID')
      end
    end
    if entry and entry[2] then
      redis.call('SET', l, me, 'PX', ttl)
      return { s, id, entry[2], row[4] + (counted and 1 or 0), key }
    end
    redis.call('LPOP', q)
    if row then
      -- Pending, but deleted from the stream: nothing to deliver. (The
      -- XCLAIM above, if it ran, dropped it from the group already.)
      order_drop_deleted(s, g, id)
    end
  end
end
