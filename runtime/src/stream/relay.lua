-- Applies one write from an outbox to its target, exactly once: a mark
-- beside the target (a hash in the target's slot, one field per outbox)
-- holds the id of the last outbox entry applied there, and an entry at or
-- before it is skipped. Outbox entries are relayed in id order, so a write
-- repeated by a relay that was interrupted, or by one that lost its lease
-- to another host, finds itself marked and writes nothing.
-- KEYS[1] the mark, KEYS[2] the target
-- ARGV[1] the outbox, ARGV[2] the outbox entry id, ARGV[3] the write's kind
--         ("xadd", "set" or "del"; stream::commit::WriteKind), ARGV[4..] its arguments
-- Returns 1 when applied, 0 when it had been already.
local WRITES = {
  xadd = function(key, args) redis.call('XADD', key, '*', unpack(args)) end,
  set = function(key, args) redis.call('SET', key, unpack(args)) end,
  del = function(key, args) redis.call('DEL', key) end,
}

-- Whether stream id `a` ("ms-seq") comes after `b`.
local function after(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end

local write = WRITES[ARGV[3]]
if not write then
  return redis.error_reply('unknown write kind ' .. ARGV[3])
end
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and not after(ARGV[2], last) then
  return 0
end
write(KEYS[2], { unpack(ARGV, 4) })
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
