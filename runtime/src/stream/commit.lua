-- Finishes a batch of deliveries. Each is all or nothing on its own: it
-- checks every write before writing anything (its kind is known, and a
-- stream it adds to is a stream or absent), then applies its writes and
-- acknowledges its entry. (MULTI/EXEC would not do: Redis does not roll back
-- a transaction when one of its commands fails, so an XADD refused with
-- WRONGTYPE would still let the XACK through and lose the write.) One script
-- per batch instead of one per delivery: Redis's cost per call, not per
-- write, dominates.
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

local group, consumer = ARGV[1], ARGV[2]
local results = {}
local k, a = 1, 3
while a <= #ARGV do
  local origin, id = KEYS[k], ARGV[a]
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
return results
