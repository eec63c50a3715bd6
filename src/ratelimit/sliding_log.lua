-- Sliding log: never more than `limit` admissions in any window of `period`, exactly, on the
-- server's clock.
-- KEYS[1]: the subject's sorted set: one member per admitted unit, scored by its admission
-- time (microseconds since the Unix epoch); members are "<time>-<counter>", unique even when
-- several units share one microsecond.
-- ARGV: limit, period (microseconds), n (0: only look).
-- Reply: {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us, limit}.
-- Only an admission writes: it prunes what left the window, adds n members and sets the TTL.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local key = KEYS[1]

-- An admission at time s counts while s > now - period (the window is (now - period, now]).
local oldest = string.format('(%d', now - period)
local count = redis.call('ZCOUNT', key, oldest, '+inf')

-- Microseconds until the k-th oldest admission in the window leaves it.
local function leaves(k)
  local e = redis.call('ZRANGEBYSCORE', key, oldest, '+inf', 'WITHSCORES', 'LIMIT', k - 1, 1)
  return math.max(1, tonumber(e[2]) + period - now)
end

-- Microseconds until the newest admission leaves the window: then the log is empty.
local function reset_after()
  local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #e == 0 then
    return 0
  end
  return math.max(0, tonumber(e[2]) + period - now)
end

local remaining = math.max(0, limit - count)
if n > limit then
  return {0, remaining, -1, reset_after(), limit}
end
if n == 0 then
  -- A peek: never a wait (zero units always fit); `remaining` tells whether one would.
  return {0, remaining, 0, reset_after(), limit}
end
if count + n > limit then
  -- All or nothing: n fit once the (count + n - limit)-th oldest admission has left.
  return {0, remaining, leaves(count + n - limit), reset_after(), limit}
end

redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - period))
-- Members are "<now>-<seq>"; ZADD NX skips a name that is taken (several units at one time,
-- or a clock that went back onto an older time).
local seq = count
if n == 1 then
  while redis.call('ZADD', key, 'NX', now, string.format('%d-%d', now, seq)) == 0 do
    seq = seq + 1
  end
else
  local batch = {}
  for _ = 1, n do
    local member
    repeat
      member = string.format('%d-%d', now, seq)
      seq = seq + 1
    until not redis.call('ZSCORE', key, member)
    batch[#batch + 1] = now
    batch[#batch + 1] = member
    if #batch >= 1000 then
      redis.call('ZADD', key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then
    redis.call('ZADD', key, unpack(batch))
  end
end
local reset = reset_after()
redis.call('PEXPIRE', key, math.max(1, math.ceil(reset / 1000)))
return {n, limit - count - n, 0, reset, limit}
