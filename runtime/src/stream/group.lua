-- Creates a consumer group at the start of its stream (making the stream if
-- missing), with Redis's count of the entries it has read set to those
-- already removed from the stream: it will never read them, and they are
-- not its to lose. With the count right from the start, entries another
-- program removes before the group reads them show in Redis's counters
-- (stream::unread) even when the group has read nothing yet; left unset,
-- Redis would guess it at the group's first read as if nothing had been
-- lost meanwhile.
-- KEYS[1] the stream
-- ARGV[1] the group
-- Returns 1 when it made the group, 0 when the group was there.

-- Runs a command, named `name` as an ACL rule names it. One the user may
-- not run fails with NOPERM naming it, as it would outside a script (a
-- script's own error says only that the user "can't run this command or
-- subcommand"); any other error is raised as it came.
local function call(name, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, "can't run this command", 1, true) then
      error(redis.error_reply("NOPERM this user has no permissions to run the '" .. name .. "' command"))
    end
    error(reply)
  end
  return reply
end

local stream, group = KEYS[1], ARGV[1]
local removed = 0
if call('exists', 'EXISTS', stream) == 1 then
  for _, g in ipairs(call('xinfo|groups', 'XINFO', 'GROUPS', stream)) do
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == group then
        return 0
      end
    end
  end
  local s = call('xinfo|stream', 'XINFO', 'STREAM', stream)
  local f = {}
  for i = 1, #s, 2 do
    f[s[i]] = s[i + 1]
  end
  removed = f['entries-added'] - f['length']
end
call('xgroup|create', 'XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM', 'ENTRIESREAD', removed)
return 1
