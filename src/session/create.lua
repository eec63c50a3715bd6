-- Creates a session and adds it to its user's index.
-- KEYS[1] session hash, KEYS[2] user index set; ARGV[1] TTL in ms, ARGV[2] session id,
-- ARGV[3..] field, value pairs. Returns 0 when the id is taken (never overwrites).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], ARGV[2])
local t = redis.call('PTTL', KEYS[2])
if t == -1 or (t >= 0 and t < ttl) then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
