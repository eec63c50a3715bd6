-- Fair lock: takes the lock if it is free and nobody queued before us.
-- KEYS[1]: the lock ("token:fence", ms expiry); KEYS[2]: the fencing counter; KEYS[3]: the
-- queue, a sorted set of waiting tokens scored by arrival (server microseconds); KEYS[4]: the
-- queue's expiries, a sorted set of the same tokens scored by when their place lapses (server
-- ms; a waiter renews it with every attempt, so a waiter that died loses its place).
-- ARGV: token, ttl (ms), wait window (ms; 0: do not queue), our arrival (0: not queued yet).
-- Reply: {1, fence} when taken (or already ours), {0, wait_ms, arrival} otherwise.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
-- Waiters whose place lapsed leave the queue.
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_ms)
if #gone > 0 then
  redis.call('ZREM', KEYS[3], unpack(gone))
  redis.call('ZREM', KEYS[4], unpack(gone))
end
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, ':', 1, true)
  if sep and string.sub(v, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(string.sub(v, sep + 1))}
  end
else
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #head == 0 or head[1] == ARGV[1] then
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
    local fence = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1,
      now_us))
    redis.call('SET', KEYS[2], fence)
    redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
    return {1, tonumber(fence)}
  end
end
local arrival = 0
local window = tonumber(ARGV[3])
if window > 0 then
  arrival = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]))
  if not arrival then
    -- A waiter that lost its place (a long pause) keeps its arrival when it comes back.
    arrival = tonumber(ARGV[4])
    if arrival == 0 then
      arrival = now_us
    end
    redis.call('ZADD', KEYS[3], string.format('%.0f', arrival), ARGV[1])
  end
  redis.call('ZADD', KEYS[4], now_ms + window, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], window)
  redis.call('PEXPIRE', KEYS[4], window)
end
local wait = 1
if v then
  wait = redis.call('PTTL', KEYS[1])
else
  -- Free, but someone queued before us: they are woken; we ask again when their place would
  -- lapse at the latest.
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #first > 0 then
    wait = tonumber(first[2]) - now_ms
  end
end
return {0, math.max(1, wait), arrival}
