-- Read-write lock: a writer that gave up waiting withdraws its intent (so readers come back in).
-- KEYS[1]: the intent. ARGV: the writer's token. Reply: 1 when withdrawn.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
