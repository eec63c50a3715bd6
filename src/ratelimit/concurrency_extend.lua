-- Concurrency limiter: renews a lease that is still held, to expire `ttl` from now.
-- KEYS[1]: the sorted set of lease ids scored by expiry (server microseconds since the Unix epoch).
-- ARGV: ttl (microseconds), lease id. Reply: 1 when renewed, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expiry then
  return 0
end
if tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + ttl), ARGV[2])
-- The key lives as long as its longest lease (the new expiry may be shorter than the old one).
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) / 1000)))
return 1
