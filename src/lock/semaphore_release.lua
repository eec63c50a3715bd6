-- Semaphore: gives a permit back and wakes one waiter.
-- KEYS[1]: the sorted set of permit ids scored by expiry (server ms); KEYS[2]: the wake list;
-- KEYS[3]: the "someone waits" flag.
-- ARGV: permit id, how long a wake-up token lives (ms).
-- Reply: 1 when the lease was still held, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('RPUSH', KEYS[2], '1') > 16 then
    redis.call('LTRIM', KEYS[2], -16, -1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if tonumber(expiry) <= now then
  return 0
end
return 1
