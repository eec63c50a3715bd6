-- Multi-lock: renews every lock, if every one is still ours.
-- KEYS: the locks. ARGV: token, ttl (ms).
-- Reply: 1 when all were renewed, 0 when any is not ours any more (then none is renewed).
local prefix = ARGV[1] .. ':'
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not (v and string.sub(v, 1, #prefix) == prefix) then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
