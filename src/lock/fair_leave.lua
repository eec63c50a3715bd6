-- Fair lock: a waiter that gives up leaves the queue, and wakes the next one if the lock is
-- free (it may have been its turn).
-- KEYS[1]: the lock; KEYS[2]: the queue; KEYS[3]: the queue's expiries.
-- ARGV: token, how long a wake-up token lives (ms), the prefix of the waiters' wake lists.
-- Reply: 1 when it was queued.
local left = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', ARGV[3] .. ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head > 0 then
    local wake = ARGV[3] .. head[1]
    redis.call('RPUSH', wake, '1')
    redis.call('LTRIM', wake, -1, -1)
    redis.call('PEXPIRE', wake, ARGV[2])
  end
end
return left
