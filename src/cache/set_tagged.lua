-- Stores a value and adds its key to every tag set; a tag set lives at least as long as
-- its longest-lived member.
-- KEYS[1] value key, KEYS[2..n] tag set keys; ARGV[1] value, ARGV[2] TTL in ms.
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  local t = redis.call('PTTL', KEYS[i])
  if t == -1 or (t >= 0 and t < ttl) then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
