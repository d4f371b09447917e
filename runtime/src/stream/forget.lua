-- Deletes a consumer from its group if it still has nothing pending and has
-- been idle long enough: checked and done in one step, so a consumer that
-- reads meanwhile is never deleted with entries of its own (deleting a
-- consumer drops its pending entries from the group).
-- KEYS[1] the stream; ARGV[1] the group, ARGV[2] the consumer, ARGV[3] min idle ms.
-- Returns 1 if deleted, 0 if not.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1]
    end
  end
  if name == ARGV[2] then
    if pending == 0 and idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
