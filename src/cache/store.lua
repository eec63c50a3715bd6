-- Stores a loaded value and releases the load lock if this caller still holds it.
-- KEYS[1] value key, KEYS[2] lock key; ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] lock token.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
