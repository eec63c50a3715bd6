-- Fair lock: releases the lock if it is still ours and wakes the first waiter in the queue.
-- KEYS[1]: the lock; KEYS[2]: the queue; KEYS[3]: the queue's expiries (see fair_acquire.lua).
-- ARGV: the lock's value ("token:fence"), how long a wake-up token lives (ms), the prefix of
-- the waiters' wake lists (a waiter's list is the prefix followed by its token).
-- Reply: 1 when released, 0 when it was not ours any more.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
if #head > 0 then
  local wake = ARGV[3] .. head[1]
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -1, -1)
  redis.call('PEXPIRE', wake, ARGV[2])
end
return 1
