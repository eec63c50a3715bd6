-- Stripe's concurrent requests limiter: a sorted set of request ids scored by when they
-- expire; expired ones are dropped, and a request gets in under the maximum.
-- KEYS[1]: the key. ARGV: maximum, ttl (ms), request id.
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < max then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
