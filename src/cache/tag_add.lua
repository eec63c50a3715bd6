-- Adds a value's key to one tag set; the set lives at least as long as its longest-lived
-- member (Redis Cluster: one tag per call, in the tag's own slot).
-- KEYS[1] tag set key; ARGV[1] the value's key, ARGV[2] TTL in ms.
local ttl = tonumber(ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
local t = redis.call('PTTL', KEYS[1])
if t == -1 or (t >= 0 and t < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
