-- Redlock: sets the key on one server if it is free.
-- KEYS[1]: the lock. ARGV: token, ttl (ms). Reply: 1 when set (or already ours), 0 when held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
