-- Finishes a batch of deliveries. Each is all or nothing on its own: it
-- checks every write before writing anything (its kind is known, and a
-- stream it adds to is a stream or absent), then applies its writes and
-- acknowledges its entry. (MULTI/EXEC would not do: Redis does not roll back
-- a transaction when one of its commands fails, so an XADD refused with
-- WRONGTYPE would still let the XACK through and lose the write.) One script
-- per batch instead of one per delivery: Redis's cost per call, not per
-- write, dominates. For the same reason a run of deliveries of one stream
-- that are not ordered by key shares one XPENDING and one XACK (finish_run),
-- and a stream's type is checked once per call, not per write. A delivery
-- that writes nothing and is not ordered by key does not come here: it is a
-- plain XACK sent beside this script (stream::commit::Commit::writes_nothing).
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
--                only the entry's owner ever writes a delivery's output, and
--                it is never written twice. Also, the entry being ordered by
--                key, when another consumer (owner) holds the key's lease
--                and an earlier entry is first in the key's queue: the
--                holder delivers this one in its turn;
--   {-1, reason} refused: a write cannot be applied (a target holds
--                something other than a stream, or a write kind this script
--                does not know); nothing of this delivery was written and its
--                entry is still pending;
--   {3, delivery} done (or already finished by an earlier try of this
--                commit), and the entry was ordered by key: it leaves its
--                key's queue, and the next entry of that key is now this
--                consumer's to deliver (order_serve in order.lua). Without a
--                next entry, the lease is given up and the result is 1 or 0.
--   {4, delivery} out of turn: the entry is ordered by key, under this
--                consumer's lease, and no longer its key's first: an earlier
--                entry was queued ahead of it while it was handled (the
--                group made again or set back, and a read queued the key's
--                earlier entries, delivered again). Nothing was written and
--                the entry stays pending; the key goes on from its first
--                entry, now this consumer's to deliver.
-- After them, when handing a key on found entries of it deleted from the
-- stream while pending (acknowledged, since there is nothing to deliver),
-- one more: {'gone', {{stream, id}, ...}} (order_gone in order.lua), so
-- that the host can warn.
--
-- An entry ordered by key that is pending with another consumer, while this
-- consumer holds its key's lease and it is the key's first, was not taken
-- over (a takeover takes the lease too): that consumer's read delivered it
-- again after the group was made again, and queued it without running it,
-- or a late retry of that consumer's claimed it. It is claimed back and
-- finished here, so that the key goes on at once.
--
-- The next new entries for the permits a batch frees are read by an
-- XREADGROUP sent with this script, not inside it
-- (stream::commit::commit_and_read): a read from a script costs Redis
-- converting every entry to Lua and back.

-- Each write's arguments are ARGV[i] to ARGV[j]. Each returns Redis's reply,
-- an error included (redis.pcall), so that the caller can first acknowledge
-- what was written before it.
local WRITES = {
  xadd = function(key, i, j) return redis.pcall('XADD', key, '*', unpack(ARGV, i, j)) end,
  set = function(key, i, j) return redis.pcall('SET', key, unpack(ARGV, i, j)) end,
  del = function(key, i, j) return redis.pcall('DEL', key) end,
  pexpire = function(key, i, j) return redis.pcall('PEXPIRE', key, unpack(ARGV, i, j)) end,
  xdel = function(key, i, j) return redis.pcall('XDEL', key, unpack(ARGV, i, j)) end,
}

-- Whether an XADD to each key this call checked would be refused (its
-- reason) or not (false). A write of this call that is not an XADD forgets
-- what was found for its key, and so does the ordering of a delivery by key
-- (its queue and lease are written outside apply()), so nothing else can
-- change a checked key's type meanwhile.
local checked = {}

-- The most arguments a write may have: Lua's unpack passes at most 8000
-- values to a call (LUAI_MAXCSTACK), and one past it raises an error that
-- would abort this script after the writes before it, unacknowledged. (An
-- entry with some 4000 fields, written by another program, dead-lettered.)
local MAX_WRITE_ARGS = 7900

-- Why `kind` to `key`, with arguments ARGV[i] to ARGV[j], cannot be
-- applied, or nil.
local function refusal(kind, key, i, j)
  if not WRITES[kind] then
    return 'unknown write kind ' .. kind
  elseif j - i + 1 > MAX_WRITE_ARGS then
    return kind .. ' to ' .. key .. ' has ' .. (j - i + 1) .. ' arguments, more than a script can pass (' .. MAX_WRITE_ARGS .. ')'
  elseif kind ~= 'xadd' then
    return nil
  end
  if checked[key] == nil then
    local t = redis.call('TYPE', key)['ok']
    checked[key] = t ~= 'none' and t ~= 'stream' and (key .. ' holds a ' .. t .. ', not a stream')
  end
  return checked[key] or nil
end

-- Applies `writes` ({kind, key, i, j} each), in order. Returns Redis's error
-- if one fails (the checks did not foresee it), leaving the rest unwritten.
local function apply(writes)
  for _, w in ipairs(writes) do
    local reply = WRITES[w[1]](w[2], w[3], w[4])
    if type(reply) == 'table' and reply.err then
      return reply.err
    end
    if w[1] ~= 'xadd' then
      checked[w[2]] = nil
    end
  end
  return nil
end

-- Reads the writes of a delivery from ARGV[a] on (their count, then each
-- write) and KEYS[k] on (their keys): returns them ({kind, key, i, j}
-- each) and the a and k after them.
local function read_writes(a, k)
  local count = tonumber(ARGV[a])
  a = a + 1
  local writes = {}
  for w = 1, count do
    local kind, argc = ARGV[a], tonumber(ARGV[a + 1])
    writes[w] = { kind, KEYS[k], a + 2, a + 1 + argc }
    a, k = a + 2 + argc, k + 1
  end
  return writes, a, k
end

-- The first reason one of `writes` cannot be applied, or nil.
local function refused(writes)
  for _, w in ipairs(writes) do
    local why = refusal(w[1], w[2], w[3], w[4])
    if why then
      return why
    end
  end
  return nil
end

-- Acknowledges `ids` of `origin` in `group`, if any. Lua's unpack takes a
-- few thousand values; a call carries at most committer.rs's MAX_BATCH (256)
-- deliveries.
local function ack(origin, group, ids)
  if #ids > 0 then
    redis.call('XACK', origin, group, unpack(ids))
  end
end

-- Finishes a run of deliveries of `origin` that are not ordered by key (in
-- the batch's order: their entry ids `ids`, and in `writes`, by place, the
-- writes of those that write), each with the result it would have on its
-- own, but with one XPENDING and one XACK for the run instead of one of each
-- per delivery (Redis's cost per call from a script is most of a
-- delivery's). Nothing runs in between and no write changes who holds an
-- entry, so no entry changes hands. Appends one result per delivery to
-- `results`. Should a write fail, returns Redis's error, the deliveries
-- written before it acknowledged (as on their own), the rest still pending.
local function finish_run(origin, ids, writes, group, consumer, results)
  local low, high = ids[1], ids[1]
  for i = 2, #ids do
    if order_before(ids[i], low) then
      low = ids[i]
    elseif order_before(high, ids[i]) then
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
  for n, id in ipairs(ids) do
    local held, result, why = mine[id], 0, writes[n] and refused(writes[n])
    if why then
      result = { -1, why }
    else
      if held == nil then
        -- Not listed: finished, another consumer's, or this one's beyond
        -- the limit. Asked alone, as a delivery on its own is.
        local pending = redis.call('XPENDING', origin, group, id, id, 1)[1]
        if pending and pending[2] == consumer then
          held = true
        elseif pending then
          result = { -2, pending[2] }
        end
      end
      if held then
        local failed = writes[n] and apply(writes[n])
        if failed then
          -- Those written before it are acknowledged, as they would be on
          -- their own; this one and the rest stay pending.
          ack(origin, group, acks)
          return failed
        end
        -- A repeat of the id later in the run finds it finished.
        mine[id] = false
        acks[#acks + 1] = id
        result = 1
      end
    end
    results[#results + 1] = result
  end
  -- After every write of the run: a delivery is acknowledged only once its
  -- writes are made.
  ack(origin, group, acks)
  return nil
end

local group, consumer = ARGV[1], ARGV[2]
local results = {}
local k, a = 1, 3
while a <= #ARGV do
  local origin = KEYS[k]
  -- The run of deliveries of `origin` from here not ordered by key: id, '0',
  -- then their writes (in `writes`, by the delivery's place in the run).
  local ids, writes = {}, {}
  while a <= #ARGV and KEYS[k] == origin and ARGV[a + 1] == '0' do
    ids[#ids + 1] = ARGV[a]
    if ARGV[a + 2] == '0' then
      a, k = a + 3, k + 1
    else
      writes[#ids], a, k = read_writes(a + 2, k + 1)
    end
  end
  if #ids > 0 then
    local failed = finish_run(origin, ids, writes, group, consumer, results)
    if failed then
      return redis.error_reply(failed)
    end
  else
    -- Ordered by key: id, '1', the key, the lease's time to live in ms,
    -- then its writes; its keys are the stream, the key's queue and lease,
    -- then its writes' keys.
    local id = ARGV[a]
    local order = { q = KEYS[k + 1], l = KEYS[k + 2], key = ARGV[a + 2], ttl = ARGV[a + 3] }
    local writes
    writes, a, k = read_writes(a + 4, k + 3)
    local why = refused(writes)
    local holder = redis.call('GET', order.l)
    -- A lapsed lease no one took is still this consumer's to use: a read or
    -- a takeover that found it free would have taken it.
    local mine = holder == consumer or not holder
    local head = redis.call('LINDEX', order.q, 0)
    -- Whether an earlier entry of the key is first in its queue.
    local behind = head and head ~= id and order_before(head, id)
    local next = nil
    if not why and mine and behind then
      -- Out of turn: an earlier entry of the key was queued ahead of this
      -- one while it ran. Usually the group was made again or set back and
      -- delivered the key's earlier entries again (order_append); rarely a
      -- scan queued one pending from before the handler ordered by key.
      -- Nothing is written: the key goes on from its first entry, and this
      -- entry stays pending for its turn. Should the entries ahead of it be
      -- gone (order_serve drops them), its turn is now.
      next = order_serve(origin, group, consumer, order.q, order.l, order.key, order.ttl, false)
      if next and next[2] == id then
        next = nil
      end
      head = redis.call('LINDEX', order.q, 0)
      checked = {}
    end
    -- Another consumer holds the key, an earlier entry is first in its
    -- queue, and this entry is still pending here: this consumer's lease
    -- lapsed while the entry ran, and that consumer took the key for an
    -- entry queued ahead of this one (the group set back or made again, and
    -- its read delivered the key's earlier entries again; or its scan
    -- queued one pending from before). Written now, this entry would go
    -- ahead of them. Nothing is written, whatever the checks found; the
    -- entry stays pending, and the key's holder delivers it in its turn
    -- (from the queue, or once the group delivers it again). (Not pending
    -- here: finished, or another's, as below.)
    local queued_behind = false
    if not mine and behind then
      local pending = redis.call('XPENDING', origin, group, id, id, 1)[1]
      queued_behind = pending and pending[2] == consumer
    end
    if queued_behind then
      results[#results + 1] = { -2, holder }
    elseif why then
      results[#results + 1] = { -1, why }
    elseif next then
      results[#results + 1] = { 4, next }
    else
      local pending = redis.call('XPENDING', origin, group, id, id, 1)[1]
      if pending and pending[2] ~= consumer and mine and head == id then
        -- Pending with another consumer, though not taken over (a takeover
        -- takes the lease too): its read delivered it again after the group
        -- was made again and queued it under this consumer's lease, or its
        -- late retry claimed it. The key's first entry is this consumer's
        -- to finish. (XCLAIM drops an entry deleted from the stream: then
        -- it is no longer pending.)
        if redis.call('XCLAIM', origin, group, consumer, 0, id, 'JUSTID')[1] then
          pending[2] = consumer
        else
          pending = nil
        end
      end
      if pending and pending[2] ~= consumer then
        results[#results + 1] = { -2, pending[2] }
      else
        local result = 0
        if pending then
          local failed = apply(writes)
          if failed then
            return redis.error_reply(failed)
          end
          result = redis.call('XACK', origin, group, id)
        end
        -- Finished (now, or by an earlier try whose reply was lost): the
        -- next entry of its key goes on with this consumer, unless another
        -- holds the key now.
        order_remove(order.q, id, head)
        if mine then
          next = order_serve(origin, group, consumer, order.q, order.l, order.key, order.ttl, false)
          if next then
            result = { 3, next }
          end
        end
        checked = {}
        results[#results + 1] = result
      end
    end
  end
end
if #order_gone > 0 then
  results[#results + 1] = { 'gone', order_gone }
end
return results
