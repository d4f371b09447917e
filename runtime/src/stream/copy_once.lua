-- Adds one redriven entry to a handler's inbox at most once, when the
-- dead-letter stream and the inbox are in different cluster slots (so one
-- script cannot move it): a marker beside the inbox remembers the copy, and
-- the caller deletes the dead-letter entry afterwards. Run again after an
-- interruption, it returns the same copy instead of adding another.
-- KEYS[1] the marker, KEYS[2] the inbox.
-- ARGV[1] the marker's time to live in ms, ARGV[2..] the copy's fields and values.
-- Returns the copy's id.
local done = redis.call('GET', KEYS[1])
if done then
  return done
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return id
