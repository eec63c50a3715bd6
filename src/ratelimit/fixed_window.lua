-- Fixed window: at most `limit` units per calendar window, on the server's clock. Windows are
-- aligned to the Unix epoch: window w covers [w * period, (w + 1) * period).
-- KEYS[1]: the subject's hash: last (time of the last admission, microseconds since the Unix
-- epoch), count (units admitted in the window of `last`).
-- ARGV: limit, period (microseconds), n (0: only look).
-- Reply: {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us, limit}.
-- Only an admission writes: the count, and a TTL until the window ends.
--
-- The window is told by `last`, not by the key expiring at the window's end: a script sees
-- keys as of its start, so near an edge it could still find the old window's key although
-- TIME already says the next window began.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local key = KEYS[1]

local start = now - now % period
local window_end = start + period
local h = redis.call('HMGET', key, 'last', 'count')
local last = tonumber(h[1])
local count = 0
if last and last >= start then
  -- Admitted in the window in progress (or later, should the clock have gone back).
  count = tonumber(h[2]) or 0
end

local reset = 0
if count > 0 then
  reset = window_end - now
end
local remaining = math.max(0, limit - count)
if n > limit then
  return {0, remaining, -1, reset, limit}
end
if n == 0 then
  -- A peek: never a wait (zero units always fit); `remaining` tells whether one would.
  return {0, remaining, 0, reset, limit}
end
if count + n > limit then
  return {0, remaining, window_end - now, reset, limit}
end

redis.call('HSET', key, 'last', now, 'count', count + n)
redis.call('PEXPIRE', key, math.ceil((window_end - now) / 1000))
return {n, limit - count - n, 0, window_end - now, limit}
