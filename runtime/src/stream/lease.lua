-- Takes or keeps a lease: sets KEYS[1] to holder ARGV[1] for ARGV[2] ms if
-- it is free or already this holder's. Returns 1 if held now, 0 if another
-- holder has it.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
