-- Sliding expiry: extends a session (and its user's index), optionally merging fields in
-- and removing some, and returns its fields.
-- KEYS[1] session hash; ARGV[1] TTL in ms, ARGV[2] user index key prefix
-- (`...:u:{<shard>}:`), ARGV[3] "1" to return the fields, ARGV[4] number N of fields to
-- remove, ARGV[5..4+N] those fields, then field, value pairs to set.
-- Returns false when the session does not exist (it is never recreated).
-- The index key is derived from the session's user; it shares the session's hash tag (the
-- user's shard), so both live in one cluster slot.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local ttl = tonumber(ARGV[1])
local ndel = tonumber(ARGV[4])
if ndel > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 5, 4 + ndel))
end
if #ARGV > 4 + ndel then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5 + ndel))
end
redis.call('PEXPIRE', KEYS[1], ttl)
local user = redis.call('HGET', KEYS[1], '__user')
if user then
  local index = ARGV[2] .. user
  local t = redis.call('PTTL', index)
  if t == -1 or (t >= 0 and t < ttl) then
    redis.call('PEXPIRE', index, ttl)
  end
end
if ARGV[3] == '1' then
  return redis.call('HGETALL', KEYS[1])
end
return {}
