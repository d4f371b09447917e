-- Stream ids in Lua, for the scripts that compare or step them (each is
-- prefixed with this file: stream::script::IDS).

-- Whether stream id `a` comes before `b`. An id's two numbers may exceed
-- what a Lua number holds exactly, so they are compared as digits (Redis
-- writes them without leading zeros): fewer digits first, then digit by
-- digit.
local function before(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  local function less(x, y)
    if #x ~= #y then
      return #x < #y
    end
    return x < y
  end
  if ams ~= bms then
    return less(ams, bms)
  end
  return less(aseq, bseq)
end

-- `digits` plus one, as digits.
local function increment(digits)
  local i = #digits
  while i > 0 and string.sub(digits, i, i) == '9' do
    i = i - 1
  end
  if i == 0 then
    return '1' .. string.rep('0', #digits)
  end
  return string.sub(digits, 1, i - 1) .. string.char(string.byte(digits, i) + 1) .. string.rep('0', #digits - i)
end

-- The smallest id after `id`: what XTRIM MINID keeps for every entry up to
-- `id` to go.
local function next_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if seq == '18446744073709551615' then
    return increment(ms) .. '-0'
  end
  return ms .. '-' .. increment(seq)
end
