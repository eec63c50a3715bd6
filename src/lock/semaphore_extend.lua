-- Semaphore: renews a permit's lease if it is still held, to expire `ttl` from now.
-- KEYS[1]: the sorted set of permit ids scored by expiry (server ms).
-- ARGV: ttl (ms), permit id. Reply: 1 when renewed, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expiry or tonumber(expiry) <= now then
  if expiry then
    redis.call('ZREM', KEYS[1], ARGV[2])
  end
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + tonumber(ARGV[1])), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
return 1
