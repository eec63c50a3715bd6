-- Destroys a session and removes it from its user's index.
-- KEYS[1] session hash; ARGV[1] user index key prefix (`...:u:{<shard>}:`), ARGV[2] session id.
local user = redis.call('HGET', KEYS[1], '__user')
local n = redis.call('DEL', KEYS[1])
if user then
  redis.call('SREM', ARGV[1] .. user, ARGV[2])
end
return n
