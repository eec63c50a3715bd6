-- The value, or the load lock for it.
-- KEYS[1] value key, KEYS[2] lock key; ARGV[1] lock token, ARGV[2] lock TTL in ms.
-- Returns {1, value, pttl} on a hit, {2} when this caller got the lock, {0} when another
-- holds it.
local v = redis.call('GET', KEYS[1])
if v then
  return {1, v, redis.call('PTTL', KEYS[1])}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {0}
