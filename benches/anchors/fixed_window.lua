-- The INCR rate limiter pattern: one counter per window, its expiry set on the first hit.
-- KEYS[1]: the key's prefix (the window number is appended). ARGV: limit, period (ms).
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local key = KEYS[1] .. ':' .. math.floor(now / period)
local count = redis.call('INCR', key)
if count == 1 then
  redis.call('PEXPIRE', key, period)
end
if count > limit then
  return {0, 0}
end
return {1, limit - count}
