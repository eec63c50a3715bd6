-- Concurrency limiter: gives a lease back.
-- KEYS[1]: the sorted set of lease ids scored by expiry (server microseconds since the Unix epoch).
-- ARGV: lease id. Reply: 1 when the lease was still held, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(expiry) <= now then
  -- Expired but not yet swept: the slot was already free for others.
  return 0
end
return 1
