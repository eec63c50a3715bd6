-- Redlock: sets the key on one server if it is free, and takes this server's next fence.
-- KEYS[1]: the lock (the token, with a ms expiry); KEYS[2]: this server's fencing counter.
-- ARGV: token, ttl (ms).
-- Reply: {1, fence} when set (or already ours: a resent call renews it and takes a new
-- fence), {0, 0} when held by another. The fence is max(counter + 1, the server's clock in
-- microseconds), as for a single-server lock.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0, 0}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local t = redis.call('TIME')
local fence = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1,
  tonumber(t[1]) * 1000000 + tonumber(t[2])))
redis.call('SET', KEYS[2], fence)
return {1, tonumber(fence)}
