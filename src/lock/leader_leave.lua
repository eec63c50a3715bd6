-- Leader election: a member leaves: its presence goes, and its leadership if it leads.
-- KEYS[1]: members; KEYS[2]: the leader. ARGV: member id, member token.
-- Reply: 1 when it was the leader.
redis.call('ZREM', KEYS[1], ARGV[1])
local v = redis.call('GET', KEYS[2])
if v then
  local sep = string.find(v, ':', 1, true)
  local rest = string.sub(v, sep + 1)
  local sep2 = string.find(rest, ':', 1, true)
  if string.sub(rest, 1, sep2 - 1) == ARGV[2] then
    redis.call('DEL', KEYS[2])
    return 1
  end
end
return 0
