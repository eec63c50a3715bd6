-- Read-write lock: releases a read lease or the write lock, and wakes waiters.
-- KEYS[1]: writer; KEYS[2]: readers; KEYS[3]: the wake list; KEYS[4]: the "someone waits" flag.
-- ARGV: token, 'r' or 'w', how long a wake-up token lives (ms).
-- Reply: 1 when it was still held, 0 when it had expired or was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = 0
local wake = 0
if ARGV[2] == 'w' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    held = 1
    -- Several readers may be waiting for a writer: wake a few.
    wake = 8
  end
else
  local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if expiry then
    redis.call('ZREM', KEYS[2], ARGV[1])
    if tonumber(expiry) > now then
      held = 1
    end
    if redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%.0f', now), '+inf') == 0 then
      wake = 1
    end
  end
end
if wake > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  for _ = 1, wake do
    redis.call('RPUSH', KEYS[3], '1')
  end
  redis.call('LTRIM', KEYS[3], -16, -1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return held
