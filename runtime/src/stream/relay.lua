-- Applies one round's writes from one outbox to the targets of one slot, in
-- outbox order, each exactly once: a mark in that slot (a hash with one field
-- per outbox) holds the id of the last outbox entry applied to any target in
-- the slot, and an entry at or before it is skipped. A relay sends a slot's
-- writes in outbox order, so a write repeated by a relay that was
-- interrupted, or by one that lost its lease to another host, finds itself
-- marked and writes nothing. (Writes to different slots may land in any
-- order.) One field per outbox and slot keeps the marks' memory bounded,
-- however many keys the writes touch.
-- KEYS[1] the mark, KEYS[2..] the targets
-- ARGV[1] the mark's field (the outbox), ARGV[2] the number of writes, then
--         per write: the outbox entry id, its target's index in KEYS, its
--         kind ("xadd", "set" or "del"; stream::commit::WriteKind), its
--         argument count, its arguments
-- Returns how many were applied (the rest had been already).
local WRITES = {
  xadd = function(key, args) redis.call('XADD', key, '*', unpack(args)) end,
  set = function(key, args) redis.call('SET', key, unpack(args)) end,
  del = function(key, args) redis.call('DEL', key) end,
  pexpire = function(key, args) redis.call('PEXPIRE', key, unpack(args)) end,
}

-- Whether stream id `a` ("ms-seq") comes after `b`.
local function after(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end

local last = redis.call('HGET', KEYS[1], ARGV[1])
local applied, a = 0, 3
for _ = 1, tonumber(ARGV[2]) do
  local id, target, kind, argc = ARGV[a], KEYS[tonumber(ARGV[a + 1])], ARGV[a + 2], tonumber(ARGV[a + 3])
  local args = {}
  for i = 1, argc do
    args[i] = ARGV[a + 3 + i]
  end
  a = a + 4 + argc
  local write = WRITES[kind]
  if not write then
    return redis.error_reply('unknown write kind ' .. kind)
  end
  if not last or after(id, last) then
    write(target, args)
    -- Marked at once: a script that fails further on keeps what it wrote
    -- (Redis does not roll back), and a repeat must skip it.
    redis.call('HSET', KEYS[1], ARGV[1], id)
    last = id
    applied = applied + 1
  end
end
return applied
