-- Finishes a batch of deliveries. Each is all or nothing on its own: it
-- checks that every stream it will write is a stream (or absent) before
-- writing anything, then applies its writes and acknowledges its entry.
-- (MULTI/EXEC would not do: Redis does not roll back a transaction when one
-- of its commands fails, so an XADD refused with WRONGTYPE would still let
-- the XACK through and lose the write.) One script per batch instead of one
-- per delivery: Redis's cost per call, not per write, dominates.
--
-- ARGV[1]      the consumer group
-- then, per delivery:
--   KEYS       the stream its entry was read from, then the key of each write
--   ARGV       the entry id, the number of writes, then per write: kind
--              ("xadd", "set", "del", or "xdel" for an inbox entry done
--              with), argument count, arguments
--
-- Returns, per delivery in order:
--   1  committed;
--   0  the entry was no longer pending (an earlier try of this same commit
--      went through, or another consumer took the entry over): nothing is
--      written, so a retried commit can never publish twice;
--   a "SLUICE_WRONGTYPE ..." string: a target is not a stream; nothing of
--      this delivery was written and its entry is still pending.
local group = ARGV[1]
local results = {}
local k, a = 1, 2
while a <= #ARGV do
  local origin, id, count = KEYS[k], ARGV[a], tonumber(ARGV[a + 1])
  k, a = k + 1, a + 2
  local writes, refused = {}, nil
  for w = 1, count do
    local kind, argc = ARGV[a], tonumber(ARGV[a + 1])
    local args = {}
    for i = 1, argc do
      args[i] = ARGV[a + 1 + i]
    end
    a = a + 2 + argc
    if kind == 'xadd' and not refused then
      local t = redis.call('TYPE', KEYS[k])['ok']
      if t ~= 'none' and t ~= 'stream' then
        refused = 'SLUICE_WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a stream'
      end
    end
    writes[w] = { kind, KEYS[k], args }
    k = k + 1
  end
  if refused then
    results[#results + 1] = refused
  elseif count == 0 then
    -- Nothing to write, so nothing to protect from a repeat: just the ack.
    results[#results + 1] = redis.call('XACK', origin, group, id)
  elseif #redis.call('XPENDING', origin, group, id, id, 1) == 0 then
    results[#results + 1] = 0
  else
    for _, w in ipairs(writes) do
      if w[1] == 'xadd' then
        redis.call('XADD', w[2], '*', unpack(w[3]))
      elseif w[1] == 'set' then
        redis.call('SET', w[2], unpack(w[3]))
      elseif w[1] == 'xdel' then
        redis.call('XDEL', w[2], unpack(w[3]))
      else
        redis.call('DEL', w[2])
      end
    end
    results[#results + 1] = redis.call('XACK', origin, group, id)
  end
end
return results
