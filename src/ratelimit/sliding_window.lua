-- Sliding window counter, on the server's clock: the count of the window in progress plus the
-- previous window's, weighted by how much of it the sliding window still covers:
--   count = prev * (1 - elapsed / period) + cur
-- Windows are aligned to the Unix epoch: window w covers [w * period, (w + 1) * period).
-- KEYS[1]: the subject's hash: last (time of the last admission, microseconds since the Unix
-- epoch), cur (units admitted in the window of `last`), prev (in the window before it).
-- ARGV: limit, period (microseconds), n (0: only look).
-- Reply: {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us, limit}.
-- Only an admission writes: the three fields and a TTL until both counts stop mattering.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local key = KEYS[1]

local start = now - now % period
local h = redis.call('HMGET', key, 'last', 'cur', 'prev')
local last = tonumber(h[1])
local cur, prev = 0, 0
if last then
  -- The stored counts belong to the window `last` falls in (under the current period).
  local last_start = last - last % period
  if last_start >= start then
    -- The window in progress (or a later one, should the clock have gone back).
    cur, prev = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  elseif last_start == start - period then
    prev = tonumber(h[2]) or 0
  end
end

local elapsed = now - start
local count = prev * (1 - elapsed / period) + cur
-- Floating point noise must not deny a request that fits exactly.
local eps = 1e-9

-- How many units fit now.
local function fits()
  return math.max(0, math.floor(limit - count + eps))
end

-- Microseconds until k units fit, if nothing more is taken meanwhile.
local function wait_for(k)
  local room = limit - k - cur
  if room >= 0 and prev > 0 then
    -- In this window: the previous window's weight falls until prev * weight <= room.
    return math.max(1, math.ceil(period * (1 - room / prev) - elapsed))
  end
  -- In the next window, where this window's count is the previous one and fades from there.
  local e = 0
  if cur > limit - k then
    e = period * (1 - (limit - k) / cur)
  end
  return math.max(1, math.ceil(start + period + e - now))
end

-- Microseconds until the count is back to 0.
local function reset_after()
  if cur > 0 then
    return start + 2 * period - now
  end
  if prev > 0 then
    return start + period - now
  end
  return 0
end

if n > limit then
  return {0, fits(), -1, reset_after(), limit}
end
if n == 0 then
  -- A peek: never a wait (zero units always fit); `remaining` tells whether one would.
  return {0, fits(), 0, reset_after(), limit}
end
if count + n > limit + eps then
  return {0, fits(), wait_for(n), reset_after(), limit}
end

cur = cur + n
count = count + n
redis.call('HSET', key, 'last', now, 'cur', cur, 'prev', prev)
-- The counts matter until the end of the next window.
redis.call('PEXPIRE', key, math.ceil((start + 2 * period - now) / 1000))
return {n, fits(), 0, reset_after(), limit}
