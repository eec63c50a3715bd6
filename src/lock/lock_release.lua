-- Lock: releases the lock if it is still ours, and wakes one waiter.
-- KEYS[1]: the lock; KEYS[2]: the wake list; KEYS[3]: the "someone waits" flag.
-- ARGV: the lock's value ("token:fence"), how long a wake-up token lives (ms).
-- Reply: 1 when released, 0 when it was not ours any more (expired, deleted, taken over).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  -- One token wakes one waiter blocked in BLPOP; never more than a few pile up.
  if redis.call('RPUSH', KEYS[2], '1') > 16 then
    redis.call('LTRIM', KEYS[2], -16, -1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
