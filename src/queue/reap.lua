-- Returns the items of a dead list-queue consumer to the ready list and forgets it,
-- unless it is alive after all (its liveness key exists).
-- KEYS[1] liveness key, KEYS[2] processing list, KEYS[3] ready list, KEYS[4] consumer set
-- ARGV[1] consumer name, ARGV[2] '1' to reap even when alive (a consumer closing itself)
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
-- LPOP + RPUSH: the move of LMOVE LEFT RIGHT (which Redis 6.0 lacks). The items go back to
-- the end the consumers take from, so they run before newer ones.
local n = 0
local item = redis.call('LPOP', KEYS[2])
while item do
  redis.call('RPUSH', KEYS[3], item)
  n = n + 1
  item = redis.call('LPOP', KEYS[2])
end
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1])
return n
