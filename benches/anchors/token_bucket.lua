-- Stripe's token bucket: a hash of the tokens left and when they were counted, refilled
-- lazily at each request.
-- KEYS[1]: the key. ARGV: capacity, refill rate (tokens per second), requested tokens.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local ttl = math.floor(capacity / rate * 2)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or 0
local filled = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = filled >= requested
local left = filled
if allowed then
  left = filled - requested
end
redis.call('HSET', KEYS[1], 'tokens', left, 'ts', now)
redis.call('EXPIRE', KEYS[1], ttl)
if allowed then
  return {1, math.floor(left)}
end
return {0, math.floor(left)}
