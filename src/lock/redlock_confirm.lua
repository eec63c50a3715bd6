-- Redlock: the second round of an acquisition. Raises this server's fencing counter to the
-- acquisition's fence (the highest any server of the majority gave), if the key is still
-- ours: a later holder's majority overlaps ours on at least one server, whose counter then
-- already holds our fence, so the later fence is greater.
-- KEYS[1]: the lock; KEYS[2]: this server's fencing counter. ARGV: token, fence.
-- Reply: 1 when confirmed, 0 when the key is not ours any more.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local fence = tonumber(ARGV[2])
if (tonumber(redis.call('GET', KEYS[2])) or 0) < fence then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
