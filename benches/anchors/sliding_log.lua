-- The sliding log recipe: a sorted set of admission times; drop what left the window, count,
-- admit if under the limit.
-- KEYS[1]: the key. ARGV: limit, period (ms), a unique member for this request.
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - period)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], period)
  return {1, limit - count - 1}
end
return {0, 0}
