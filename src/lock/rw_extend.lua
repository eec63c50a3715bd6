-- Read-write lock: renews a read lease or the write lock if still held (see rw_lib.lua).
-- ARGV[4]: "r" or "w"; ARGV[5]: ttl (ms); ARGV[6]: the writer's value ("token:fence"; for "w").
-- Reply: 1 when renewed, 0 when it had expired or was gone.
local ttl = tonumber(ARGV[5])
if ARGV[4] == 'w' then
  if writer == ARGV[6] then
    redis.call('PEXPIRE', W, ttl)
    if redis.call('EXISTS', S) == 1 then
      redis.call('PEXPIRE', S, math.max(window, ttl))
    end
    return 1
  end
  return 0
end
if not redis.call('ZSCORE', R, token) then
  return 0
end
redis.call('ZADD', R, 'XX', fmt(now + ttl), token)
expire_readers()
return 1
