-- Returns the items of a dead list-queue consumer to the ready list and forgets it,
-- unless it is alive after all (its liveness key exists).
-- KEYS[1] liveness key, KEYS[2] processing list, KEYS[3] ready list, KEYS[4] consumer set
-- ARGV[1] consumer name, ARGV[2] '1' to reap even when alive (a consumer closing itself)
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do
  n = n + 1
end
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1])
return n
