-- Concurrency limiter: takes a slot (a lease) if fewer than the maximum are held.
-- KEYS[1]: a sorted set of lease ids scored by expiry (server microseconds since the Unix
-- epoch); KEYS[2]: the "someone waits" flag (a release then leaves a wake-up token).
-- ARGV: max_in_flight, lease_ttl (microseconds), lease id, wait window (ms; 0 when the caller
-- will not wait).
-- Reply: {acquired (1 or 0), in_flight, wait_us}: when refused, wait_us is the time until enough
-- leases expire for a slot to come back (a release frees one sooner, and wakes a waiter); 0
-- when acquired.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local id = ARGV[3]

-- Expired leases (crashed or stuck holders) give their slots back.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))

-- The key lives as long as its longest lease.
local function expire_with_longest()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) / 1000)))
end

local count = redis.call('ZCARD', KEYS[1])
if count == 0 then
  -- The common case of a quiet subject: nothing to check, and the new lease is the longest.
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), id)
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ttl / 1000)))
  return {1, 1, 0}
end
-- Already held: a resent call whose first attempt took the slot. Renew it; this makes the
-- script safe to run twice.
if redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), id)
  expire_with_longest()
  return {1, count, 0}
end
if count < max then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), id)
  expire_with_longest()
  return {1, count + 1, 0}
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
-- Full (or over a lowered maximum): the (count - max + 1)th expiry frees a slot.
local nth = redis.call('ZRANGE', KEYS[1], count - max, count - max, 'WITHSCORES')
return {0, count, math.max(1, tonumber(nth[2]) - now)}
