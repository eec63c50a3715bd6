-- Token bucket on the server's clock.
-- KEYS[1]: the subject's hash {tokens (float), ts (server microseconds since the Unix epoch, when
-- `tokens` was right)}; an absent key is a full bucket.
-- ARGV: capacity, refill (tokens), per (microseconds), n (tokens to take; 0 only looks).
-- Reply: {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us, capacity}.
-- Only a granted take writes; its TTL is the time until the bucket is full again, so an idle
-- key vanishes exactly when it would read as full anyway.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
-- Absorbs floating point noise when counting whole tokens.
local eps = 1e-6

-- Microseconds until a bucket holding `have` tokens holds `want`.
local function until_holds(have, want)
  if have >= want then
    return 0
  end
  return math.ceil((want - have) * per / refill)
end

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
elseif now > ts then
  -- (A clock that went backwards, after a failover, refills nothing.)
  tokens = tokens + (now - ts) * refill / per
end
-- Also clamps a count stored under a larger capacity.
if tokens > capacity then
  tokens = capacity
end
local whole = math.floor(tokens + eps)

if n == 0 then
  -- A pure peek: no write, and never a wait (zero tokens always fit); `remaining` tells
  -- whether one would.
  return {0, whole, 0, until_holds(tokens, capacity), capacity}
end
if n > capacity then
  return {0, whole, -1, until_holds(tokens, capacity), capacity}
end
if whole < n then
  -- All or nothing: nothing is taken, nothing written.
  return {0, whole, math.max(1, until_holds(tokens, n)), until_holds(tokens, capacity), capacity}
end

tokens = math.max(0, tokens - n)
local reset_after = until_holds(tokens, capacity)
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(reset_after / 1000)))
return {n, math.floor(tokens + eps), 0, reset_after, capacity}
