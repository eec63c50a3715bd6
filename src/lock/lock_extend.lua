-- Lock: renews the lock's expiry if it is still ours.
-- KEYS[1]: the lock. ARGV: the lock's value ("token:fence"), the new ttl (ms).
-- Reply: 1 when renewed, 0 when it was not ours any more.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
