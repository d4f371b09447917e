-- Finishes a batch of deliveries. Each is all or nothing on its own: it
-- checks every write before writing anything (its kind is known, and a
-- stream it adds to is a stream or absent), then applies its writes and
-- acknowledges its entry. (MULTI/EXEC would not do: Redis does not roll back
-- a transaction when one of its commands fails, so an XADD refused with
-- WRONGTYPE would still let the XACK through and lose the write.) One script
-- per batch instead of one per delivery: Redis's cost per call, not per
-- write, dominates. For the same reason a run of deliveries that write
-- nothing (most, for handlers that only consume) shares one XPENDING and one
-- XACK (finish_quiet_run).
--
-- ARGV[1]      the consumer group
-- ARGV[2]      the consumer committing (this host's name in the group)
-- then, per delivery:
--   KEYS       the stream its entry was read from, then (ordered by key) its
--              key's queue and lease, then the key of each write
--   ARGV       the entry id, '1' if ordered by key (then the key and the
--              lease's time to live in ms) or '0', the number of writes,
--              then per write: its kind (one of WRITES below;
--              stream::commit::Write on the Rust side), argument count,
--              arguments
--
-- Returns, per delivery in order:
--   1            done: written and acknowledged;
--   0            already finished: the entry was no longer pending in the
--                group, so nothing was written. Either an earlier try of this
--                same commit went through (its reply was lost), or the entry
--                was taken over by another consumer, which finished it
--                first;
--   {-2, owner}  taken over: the entry is pending with another consumer,
--                which took it over (after claim_idle_ms, this host being
--                presumed dead) and will finish it; nothing was written. So
--                only the entry's owner ever commits it, and its output is
--                never written twice;
--   {-1, reason} refused: a write cannot be applied (a target holds
--                something other than a stream, or a write kind this script
--                does not know); nothing of this delivery was written and its
--                entry is still pending;
--   {3, delivery} done (or already finished by an earlier try of this
--                commit), and the entry was ordered by key: it leaves its
--                key's queue, and the next entry of that key is now this
--                consumer's to deliver (order_serve in order.lua). Without a
--                next entry, the lease is given up and the result is 1 or 0.
local WRITES = {
  xadd = function(key, args) redis.call('XADD', key, '*', unpack(args)) end,
  set = function(key, args) redis.call('SET', key, unpack(args)) end,
  del = function(key, args) redis.call('DEL', key) end,
  pexpire = function(key, args) redis.call('PEXPIRE', key, unpack(args)) end,
  xdel = function(key, args) redis.call('XDEL', key, unpack(args)) end,
}

-- Why `kind` to `key` cannot be applied, or nil.
local function refusal(kind, key)
  if not WRITES[kind] then
    return 'unknown write kind ' .. kind
  end
  if kind == 'xadd' then
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'none' and t ~= 'stream' then
      return key .. ' holds a ' .. t .. ', not a stream'
    end
  end
  return nil
end

-- Whether stream id `x` comes before `y`. An id's two numbers may exceed
-- what a Lua number holds exactly, so they are compared as digits (Redis
-- writes them without leading zeros): fewer digits first, then digit by
-- digit.
local function id_before(x, y)
  local dx, dy = string.find(x, '-', 1, true), string.find(y, '-', 1, true)
  if dx ~= dy or not dx then
    return (dx or 0) < (dy or 0)
  end
  local mx, my = string.sub(x, 1, dx), string.sub(y, 1, dy)
  if mx ~= my then
    return mx < my
  elseif #x ~= #y then
    return #x < #y
  end
  return x < y
end

-- Finishes a run of deliveries of `origin` (entry ids `ids`, in the batch's
-- order) that write nothing and are not ordered by key, each with the result
-- it would have on its own, but with one XPENDING and one XACK for the run
-- instead of one of each per delivery (Redis's cost per call from a script
-- is most of a delivery's). Nothing runs in between, so no entry changes
-- hands. Appends one result per delivery to `results`.
local function finish_quiet_run(origin, ids, group, consumer, results)
  local low, high = ids[1], ids[1]
  for i = 2, #ids do
    if id_before(ids[i], low) then
      low = ids[i]
    elseif id_before(high, ids[i]) then
      high = ids[i]
    end
  end
  -- This consumer's pending entries in the run's range, up to a limit: the
  -- range may also hold entries still in flight.
  local listed = redis.call('XPENDING', origin, group, low, high, 2 * #ids, consumer)
  local mine = {}
  for _, p in ipairs(listed) do
    mine[p[1]] = true
  end
  local acks = {}
  for _, id in ipairs(ids) do
    local held, result = mine[id], 0
    if held == nil then
      -- Not listed: finished, another consumer's, or this one's beyond the
      -- limit. Asked alone, as a delivery on its own is.
      local pending = redis.call('XPENDING', origin, group, id, id, 1)[1]
      if pending and pending[2] == consumer then
        held = true
      elseif pending then
        result = { -2, pending[2] }
      end
    end
    if held then
      -- A repeat of the id later in the run finds it finished.
      mine[id] = false
      acks[#acks + 1] = id
      result = 1
    end
    results[#results + 1] = result
  end
  -- Lua's unpack takes a few thousand values; a call carries at most
  -- committer.rs's MAX_BATCH (256) deliveries.
  if #acks > 0 then
    redis.call('XACK', origin, group, unpack(acks))
  end
end

local group, consumer = ARGV[1], ARGV[2]
local results = {}
local k, a = 1, 3
while a <= #ARGV do
  local origin, id = KEYS[k], ARGV[a]
  -- The run of deliveries of `origin` from here that write nothing and are
  -- not ordered by key: id, '0', '0' each.
  local quiet = {}
  while a <= #ARGV and KEYS[k] == origin and ARGV[a + 1] == '0' and ARGV[a + 2] == '0' do
    quiet[#quiet + 1] = ARGV[a]
    k, a = k + 1, a + 3
  end
  if #quiet > 0 then
    finish_quiet_run(origin, quiet, group, consumer, results)
  else
    local order = nil
    k, a = k + 1, a + 1
    if ARGV[a] == '1' then
      order = { q = KEYS[k], l = KEYS[k + 1], key = ARGV[a + 1], ttl = ARGV[a + 2] }
      k, a = k + 2, a + 3
    else
      a = a + 1
    end
    local count = tonumber(ARGV[a])
    a = a + 1
    local writes, refused = {}, nil
    for w = 1, count do
      local kind, argc = ARGV[a], tonumber(ARGV[a + 1])
      local args = {}
      for i = 1, argc do
        args[i] = ARGV[a + 1 + i]
      end
      a = a + 2 + argc
      refused = refused or refusal(kind, KEYS[k])
      writes[w] = { kind, KEYS[k], args }
      k = k + 1
    end
    local pending = redis.call('XPENDING', origin, group, id, id, 1)[1]
    if refused then
      results[#results + 1] = { -1, refused }
    elseif pending and pending[2] ~= consumer then
      results[#results + 1] = { -2, pending[2] }
    else
      local result = 0
      if pending then
        for _, w in ipairs(writes) do
          WRITES[w[1]](w[2], w[3])
        end
        result = redis.call('XACK', origin, group, id)
      end
      if order then
        -- Finished (now, or by an earlier try whose reply was lost): the next
        -- entry of its key goes on with this consumer, unless another holds
        -- the key now.
        order_remove(order.q, id)
        local holder = redis.call('GET', order.l)
        -- A lapsed lease no one took is still this consumer's to use.
        if holder == consumer or not holder then
          local next = order_serve(origin, group, consumer, order.q, order.l, order.key, order.ttl, false)
          if next then
            result = { 3, next }
          end
        end
      end
      results[#results + 1] = result
    end
  end
end
return results
