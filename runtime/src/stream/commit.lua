-- Finishes one delivery atomically: checks that every stream it will write
-- is a stream (or absent) before writing anything, then applies the writes
-- and acknowledges the entry. (MULTI/EXEC would not do: Redis does not roll
-- back a transaction when one of its commands fails, so an XADD refused with
-- WRONGTYPE would still let the XACK through and lose the write.)
--
-- KEYS[1]      the stream the entry was read from
-- KEYS[2..n]   the key each write goes to, in order
-- ARGV[1]      the consumer group
-- ARGV[2]      the entry id
-- ARGV[3..]    per write: kind ("xadd", "set" or "del"), argument count, arguments
--
-- Returns 1 when committed, 0 when the entry was no longer pending (an
-- earlier try of this same commit went through, or another consumer took
-- the entry over): then nothing is written, so a retried commit can never
-- publish twice.
local still_pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #still_pending == 0 then
  return 0
end
local writes = {}
local pos = 3
for k = 2, #KEYS do
  local kind, argc = ARGV[pos], tonumber(ARGV[pos + 1])
  local args = {}
  for i = 1, argc do
    args[i] = ARGV[pos + 1 + i]
  end
  pos = pos + 2 + argc
  if kind == 'xadd' then
    local t = redis.call('TYPE', KEYS[k])['ok']
    if t ~= 'none' and t ~= 'stream' then
      return redis.error_reply('SLUICE_WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a stream')
    end
  end
  writes[#writes + 1] = { kind, KEYS[k], args }
end
for _, w in ipairs(writes) do
  if w[1] == 'xadd' then
    redis.call('XADD', w[2], '*', unpack(w[3]))
  elseif w[1] == 'set' then
    redis.call('SET', w[2], unpack(w[3]))
  else
    redis.call('DEL', w[2])
  end
end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
