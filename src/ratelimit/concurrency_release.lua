-- Concurrency limiter: gives a lease back, and wakes one waiter if someone waits.
-- KEYS[1]: the sorted set of lease ids scored by expiry (server microseconds since the Unix
-- epoch); KEYS[2]: the wake list waiters block on; KEYS[3]: the "someone waits" flag.
-- ARGV: lease id, how long a wake-up token lives (ms).
-- Reply: 1 when the lease was still held, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  -- One token wakes one waiter blocked in BLPOP; never more than a few pile up.
  if redis.call('RPUSH', KEYS[2], '1') > 16 then
    redis.call('LTRIM', KEYS[2], -16, -1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if tonumber(expiry) <= now then
  -- Expired but not yet swept: the slot was already free for others.
  return 0
end
return 1
