-- Write-behind: settles keys a flusher took. 'done': the store has the version taken; the
-- entry goes unless a newer write came meanwhile (then it stays, due after the delay).
-- 'failed': the store write failed; due again after ARGV[2] ms.
-- Only keys still leased to the caller are settled (a flusher whose lease ran out changes
-- nothing: the key was due again, and may be another's now).
-- KEYS[1] values, KEYS[2] versions, KEYS[3] due, KEYS[4] leases, KEYS[5] lease owners
-- ARGV[1] 'done' | 'failed', ARGV[2] delay ms, ARGV[3] the caller's token, then key, version
-- pairs
-- Returns how many entries were removed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay = tonumber(ARGV[2])
local removed = 0
for i = 4, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[5], k) == ARGV[3] then
    redis.call('ZREM', KEYS[4], k)
    redis.call('HDEL', KEYS[5], k)
    if ARGV[1] == 'done' and redis.call('HGET', KEYS[2], k) == v then
      redis.call('HDEL', KEYS[1], k)
      redis.call('HDEL', KEYS[2], k)
      redis.call('ZREM', KEYS[3], k)
      removed = removed + 1
    elseif redis.call('HEXISTS', KEYS[1], k) == 1 then
      if ARGV[1] == 'done' then
        redis.call('ZADD', KEYS[3], 'NX', now + delay, k)
      else
        redis.call('ZADD', KEYS[3], now + delay, k)
      end
    end
  end
end
return removed
