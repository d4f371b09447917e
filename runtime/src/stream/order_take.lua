-- Taking entries in for a handler that orders by key (after order.lua).
-- Every keyed entry seen goes into its key's queue; a key whose lease no
-- one holds is taken, and its queue's first entry returned to deliver.
-- Entries without a key are delivered as they come.
--
-- ARGV[1]   mode: 'read', 'own', 'idle', 'renew' or 'release'
-- ARGV[2]   the group;  ARGV[3] this consumer
-- ARGV[4]   'field' or 'data', ARGV[5] the field or data key (order_key)
-- ARGV[6]   the lease's time to live, ms
--
-- read:  KEYS the streams; ARGV[7] how many entries to read; ARGV[8] how
--        many keys this consumer has room to take; ARGV[9..] the key prefix
--        of each stream. First takes keys left waiting for a holder, then
--        reads new entries (XREADGROUP, which does not block in a script).
--        A key nobody holds is taken while there is room; beyond that it is
--        left waiting (in the set P .. 'waiting'), and a wake-up entry added
--        to P .. 'wake' so that a consumer blocked on it takes it. Returns
--        {deliveries, last, gone}: `last`, when there was nothing, is a
--        flat list of each stream and wake-up stream with the id of its
--        last entry (to block on with XREAD), else false; `gone`, below.
-- own:   this consumer's pending entries (a restart, a lost reply);
-- idle:  entries of any consumer idle at least the given time (dead hosts).
--        KEYS[1] the stream; ARGV[7] its key prefix; ARGV[8] min idle ms;
--        ARGV[9] where to start ('-' or '(id'); ARGV[10] page size;
--        ARGV[11] how many deliveries this consumer has room for (the page
--        ends early when they are taken); ARGV[12] n, then n keys this
--        consumer is serving, then the ids it is delivering. A keyed entry's key is taken if no one holds it (or,
--        in 'own', if this consumer holds it from before but is not serving
--        it); an entry without a key is claimed (a delivery, counted).
--        Returns {deliveries, next start or false, gone}.
-- renew: KEYS[1] the stream; ARGV[7] its key prefix; ARGV[8] n, then n
--        keys this consumer serves, then the ids it is delivering. Renews
--        their leases (or takes a lapsed one back if no one else took it
--        and this consumer is delivering the key's first entry); returns
--        those another consumer took while this one delivers their first
--        entry.
-- release: KEYS[1] the stream; ARGV[7] its key prefix; ARGV[8..] keys this
--        consumer serves. Gives up those leases (on shutdown, or once a
--        key's chain of deliveries ended with no commit to hand it on).
--
-- A delivery is {stream, id, fields, attempt, key or false}. `gone` lists
-- {stream, id} for each entry found deleted from its stream while pending,
-- and so dropped from the group (order_gone in order.lua).

local mode, g, me, by, name, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- Takes the key of entry `id` of `s`, pending from before, if `may_take`
-- says its holder lets this consumer take it: adds the entry to the key's
-- queue (in its place, if it is not there yet) and returns the queue's
-- first entry to deliver (a takeover, counted), or nil.
local function take_pending(s, p, id, key, may_take)
  local q, l = p .. 'queue:' .. key, p .. 'lease:' .. key
  if not may_take(redis.call('GET', l)) then
    return nil
  end
  order_insert(q, id)
  return order_serve(s, g, me, q, l, key, ttl, true)
end

-- The first entry of `key`'s queue to deliver, if no one holds the key.
local function serve_if_free(s, p, key)
  local q, l = p .. 'queue:' .. key, p .. 'lease:' .. key
  if redis.call('GET', l) then
    return nil
  end
  return order_serve(s, g, me, q, l, key, ttl, false)
end

-- Takes keys waiting for a holder (left by reads that had no room for
-- them), up to `budget`; returns what to deliver and the budget left.
local function take_waiting(s, p, budget, out)
  local waiting = p .. 'waiting'
  while budget > 0 do
    local key = redis.call('SPOP', waiting)
    if not key then
      break
    end
    local d = serve_if_free(s, p, key)
    if d then
      out[#out + 1] = d
      budget = budget - 1
    end
  end
  return budget
end

local function read()
  local budget = tonumber(ARGV[8])
  local args = { 'XREADGROUP', 'GROUP', g, me, 'COUNT', ARGV[7], 'STREAMS' }
  for i = 1, #KEYS do
    args[#args + 1] = KEYS[i]
  end
  for i = 1, #KEYS do
    args[#args + 1] = '>'
  end
  local prefix, out = {}, {}
  for i = 1, #KEYS do
    prefix[KEYS[i]] = ARGV[8 + i]
    budget = take_waiting(KEYS[i], prefix[KEYS[i]], budget, out)
  end
  local found, taken, woken = redis.call(unpack(args)), {}, {}
  if not found and #out == 0 then
    -- Nothing new: wait (XREAD) on each stream and on its wake-up stream.
    local last = {}
    for i = 1, #KEYS do
      for _, k in ipairs({ KEYS[i], prefix[KEYS[i]] .. 'wake' }) do
        local e = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)[1]
        last[#last + 1] = k
        last[#last + 1] = e and e[1] or '0-0'
      end
    end
    return { out, last, order_gone }
  end
  for _, pair in ipairs(found or {}) do
    local s = pair[1]
    for _, e in ipairs(pair[2]) do
      local key = order_key(e[2], by, name)
      if not key then
        out[#out + 1] = { s, e[1], e[2], 1, false }
        budget = budget - 1
      else
        local q, l = prefix[s] .. 'queue:' .. key, prefix[s] .. 'lease:' .. key
        -- (The key's first entry in this read is checked; the rest follow it.)
        if taken[q] then
          redis.call('RPUSH', q, e[1])
        else
          order_append(s, g, q, e[1])
        end
        if not taken[q] and not redis.call('GET', l) then
          if budget > 0 then
            local d = order_serve(s, g, me, q, l, key, ttl, false)
            if d then
              out[#out + 1] = d
              budget = budget - 1
            end
          else
            -- No room here: the key waits for a consumer that has some.
            redis.call('SADD', prefix[s] .. 'waiting', key)
            woken[s] = true
          end
        end
        taken[q] = true
      end
    end
  end
  for s in pairs(woken) do
    redis.call('XADD', prefix[s] .. 'wake', 'MAXLEN', 1, '*', 'key', 'waiting')
  end
  return { out, false, order_gone }
end

local function scan()
  local s, p, min_idle, start, count = KEYS[1], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
  local budget, n = tonumber(ARGV[11]), tonumber(ARGV[12])
  local serving, held = {}, {}
  for i = 13, 12 + n do
    serving[ARGV[i]] = true
  end
  for i = 13 + n, #ARGV do
    held[ARGV[i]] = true
  end
  local rows
  if mode == 'own' then
    rows = redis.call('XPENDING', s, g, 'IDLE', min_idle, start, '+', count, me)
  else
    rows = redis.call('XPENDING', s, g, 'IDLE', min_idle, start, '+', count)
  end
  local may_take = function(key)
    return function(holder)
      if serving[key] then
        return false
      end
      return not holder or (mode == 'own' and holder == me)
    end
  end
  local out, next = {}, false
  for i, row in ipairs(rows) do
    if budget <= 0 then
      -- Room for no more: the next page starts here.
      next = i > 1 and ('(' .. rows[i - 1][1]) or start
      break
    end
    local id = row[1]
    local e = redis.call('XRANGE', s, id, id)[1]
    local key = e and order_key(e[2], by, name)
    if key then
      local d = take_pending(s, p, id, key, may_take(key))
      serving[key] = true
      if d then
        out[#out + 1] = d
        budget = budget - 1
      end
    elseif not held[id] then
      -- No key, or deleted from the stream: XCLAIM then drops it.
      if not e then
        order_gone[#order_gone + 1] = { s, id }
      end
      local claimed = redis.call('XCLAIM', s, g, me, min_idle, id)[1]
      if claimed and claimed[2] then
        out[#out + 1] = { s, id, claimed[2], row[4] + 1, false }
        budget = budget - 1
      end
    end
  end
  if not next and #rows == count then
    next = '(' .. rows[#rows][1]
  end
  return { out, next, order_gone }
end

-- Whether the first entry of queue `q` is one this consumer is delivering
-- (in `delivering`) and, if `pending_here`, is pending with it.
local function delivers_head(s, q, delivering, pending_here)
  local head = redis.call('LINDEX', q, 0)
  if not head or not delivering[head] then
    return false
  elseif not pending_here then
    return true
  end
  local row = redis.call('XPENDING', s, g, head, head, 1)[1]
  return row and row[2] == me
end

local function renew()
  local s, p, n, lost, delivering = KEYS[1], ARGV[7], tonumber(ARGV[8]), {}, {}
  for i = 9 + n, #ARGV do
    delivering[ARGV[i]] = true
  end
  for i = 9, 8 + n do
    local l = p .. 'lease:' .. ARGV[i]
    local holder = redis.call('GET', l)
    if holder == me then
      redis.call('PEXPIRE', l, ttl)
    elseif not holder and delivers_head(s, p .. 'queue:' .. ARGV[i], delivering, true) then
      -- Lapsed (this host was slow to renew) and no one took it, while this
      -- consumer is still delivering its first entry: ours again. Not when
      -- the first entry is only pending here: a read queued it after the
      -- key's last delivery here was committed (whose reply this host may
      -- not have seen yet, and so still counts the key as served), and a
      -- lease taken for it would keep everyone from serving it.
      redis.call('SET', l, me, 'PX', ttl)
    elseif holder and delivers_head(s, p .. 'queue:' .. ARGV[i], delivering, false) then
      -- Taken over while this consumer delivers the key's first entry (the
      -- takeover claimed it). Not lost when that entry is gone from the
      -- queue: this consumer's commit of it ended the key's chain here (its
      -- reply not seen yet), and another consumer took the key from
      -- `waiting` for the next; or the taker finished the entry already,
      -- and this consumer's commit says so.
      lost[#lost + 1] = ARGV[i]
    end
  end
  return lost
end

-- Gives up the leases of the keys in ARGV[8..] that this consumer holds
-- (on shutdown, so that another host may take them at once; or once a
-- key's chain of deliveries ended with no commit to hand it on).
local function release()
  local p = ARGV[7]
  for i = 8, #ARGV do
    local l = p .. 'lease:' .. ARGV[i]
    if redis.call('GET', l) == me then
      redis.call('DEL', l)
    end
  end
  return {}
end

if mode == 'read' then
  return read()
elseif mode == 'renew' then
  return renew()
elseif mode == 'release' then
  return release()
end
return scan()
