-- Takes a tag set away, atomically: its members, and the set is gone (Redis Cluster: the
-- members live in other slots and are removed afterwards).
-- KEYS[1] tag set key. Returns the members.
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
