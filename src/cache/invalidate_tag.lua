-- Removes every key of a tag, and the tag set, atomically.
-- KEYS[1] tag set key. Returns how many keys existed.
-- Used without Redis Cluster only (the members live in other slots on a cluster).
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for i = 1, #members, 1000 do
  n = n + redis.call('UNLINK', unpack(members, i, math.min(i + 999, #members)))
end
redis.call('DEL', KEYS[1])
return n
