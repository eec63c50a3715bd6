-- Multi-lock: releases every lock that is still ours and wakes a waiter of each (as a single
-- lock's release does).
-- KEYS: for each lock: the lock, its wake list, its "someone waits" flag.
-- ARGV: token, how long a wake-up token lives (ms).
-- Reply: how many were still ours.
local n = #KEYS / 3
local prefix = ARGV[1] .. ':'
local released = 0
for i = 1, n do
  local v = redis.call('GET', KEYS[i * 3 - 2])
  if v and string.sub(v, 1, #prefix) == prefix then
    redis.call('DEL', KEYS[i * 3 - 2])
    released = released + 1
    if redis.call('EXISTS', KEYS[i * 3]) == 1 then
      if redis.call('RPUSH', KEYS[i * 3 - 1], '1') > 16 then
        redis.call('LTRIM', KEYS[i * 3 - 1], -16, -1)
      end
      redis.call('PEXPIRE', KEYS[i * 3 - 1], ARGV[2])
    end
  end
end
return released
