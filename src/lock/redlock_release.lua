-- Redlock: deletes the key on one server if it is still ours.
-- KEYS[1]: the lock. ARGV: token. Reply: 1 when deleted, 0 when it was not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
