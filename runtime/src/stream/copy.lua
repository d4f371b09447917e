-- Moves one dead-letter entry into a handler's inbox, atomically: the copy
-- is added only if the entry is still there, and the entry is deleted only
-- together with the copy. Interrupted or run twice, nothing is lost and
-- nothing doubles.
-- KEYS[1] the dead-letter stream, KEYS[2] the inbox.
-- ARGV[1] the dead-letter entry id, ARGV[2..] the copy's fields and values.
-- Returns the copy's id, or false if the entry was gone.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
