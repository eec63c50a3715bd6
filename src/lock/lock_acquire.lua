-- Lock: takes the lock if it is free.
-- KEYS[1]: the lock, a string "token:fence" with a millisecond expiry; KEYS[2]: the fencing
-- counter (never expires); KEYS[3]: the "someone waits" flag.
-- ARGV: token, ttl (ms), wait window (ms; 0 when the caller will not wait).
-- Reply: {1, fence} when taken (or already ours: a resent call finds its own token, renews the
-- expiry and gets the same fence back), {0, pttl} when another holder has it (pttl -1: it has
-- no expiry).
-- The fence is max(counter + 1, the server's clock in microseconds): it never goes back, even
-- when the counter was lost (a restart without persistence, a failover to a replica that had
-- not received it), as long as the server's clock does not go back.
local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('TIME')
  local fence = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1,
    tonumber(t[1]) * 1000000 + tonumber(t[2])))
  redis.call('SET', KEYS[2], fence)
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
  return {1, tonumber(fence)}
end
local sep = string.find(v, ':', 1, true)
if sep and string.sub(v, 1, sep - 1) == ARGV[1] then
  -- A write, so that a replica acknowledgement after a resent call covers the acquisition.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(string.sub(v, sep + 1))}
end
if ARGV[3] ~= '0' then
  -- Tells the holder's release to leave a wake-up token for us.
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
return {0, redis.call('PTTL', KEYS[1])}
