-- Lock: the time left on the lock if it is still ours; writes nothing.
-- KEYS[1]: the lock. ARGV: the lock's value ("token:fence").
-- Reply: the PTTL in ms (-1: no expiry), or -2 when it is not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
return -2
