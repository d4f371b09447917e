-- Gives a lease back: deletes KEYS[1] if holder ARGV[1] has it.
-- Returns 1 if it was this holder's, 0 if not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
