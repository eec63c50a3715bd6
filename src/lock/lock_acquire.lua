-- Lock: takes the lock if it is free.
-- KEYS[1]: the lock, a string "token:fence" with a millisecond expiry; KEYS[2]: the fencing
-- counter (never expires); KEYS[3]: the "someone waits" flag.
-- ARGV: token, ttl (ms), wait window (ms; 0 when the caller will not wait).
-- Reply: {1, fence} when taken (or already ours: a resent call finds its own token and gets the
-- same fence back), {0, pttl} when another holder has it (pttl -1: it has no expiry).
local v = redis.call('GET', KEYS[1])
if not v then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
  return {1, fence}
end
local sep = string.find(v, ':', 1, true)
if sep and string.sub(v, 1, sep - 1) == ARGV[1] then
  return {1, tonumber(string.sub(v, sep + 1))}
end
if ARGV[3] ~= '0' then
  -- Tells the holder's release to leave a wake-up token for us.
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
return {0, redis.call('PTTL', KEYS[1])}
