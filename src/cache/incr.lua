-- INCRBY that gives a new counter the default TTL and keeps an existing one's.
-- KEYS[1] counter key; ARGV[1] increment, ARGV[2] TTL in ms.
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
