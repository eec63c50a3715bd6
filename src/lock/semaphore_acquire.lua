-- Semaphore: takes a permit (a lease) if fewer than the maximum are held.
-- KEYS[1]: a sorted set of permit ids scored by expiry (server milliseconds since the Unix
-- epoch); KEYS[2]: the "someone waits" flag; KEYS[3]: the fencing counter (never expires).
-- ARGV: permits, lease ttl (ms), permit id, wait window (ms; 0 when the caller will not wait).
-- Reply: {1, held, fence} when taken (or already ours: a resent call renews it and gets a new
-- fence, since the caller never saw the first one), {0, wait_ms} when all permits are held:
-- wait_ms is the time until the earliest lease expires.
-- The fence is max(counter + 1, the server's clock in microseconds), as for a lock: it never
-- goes back, even when the counter was lost.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local count = redis.call('ZCARD', KEYS[1])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[3])
if mine or count < max then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[3])
  -- The key lives as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
  if not mine then
    count = count + 1
  end
  local fence = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[3])) or 0) + 1,
    now_us))
  redis.call('SET', KEYS[3], fence)
  return {1, count, tonumber(fence)}
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(first[2]) - now)}
