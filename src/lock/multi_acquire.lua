-- Multi-lock: takes several locks at once, all or nothing. Each is an ordinary lock (the same
-- keys and values as a single lock of that name), so single locks and multi-locks of the
-- same names exclude each other.
-- KEYS: for each lock, in order: the lock ("token:fence", ms expiry), its fencing counter,
-- its "someone waits" flag.
-- ARGV: token, ttl (ms), wait window (ms; 0 when the caller will not wait).
-- Reply: {1, fence_1, ..., fence_n} when all were taken (or are already ours: a resent call
-- renews them and gets the same fences back), {0, wait_ms} when any is held by another
-- (wait_ms: until the last of those expires); then nothing was taken.
local n = #KEYS / 3
local token = ARGV[1]
local held_by_others = {}
local values = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i * 3 - 2])
  values[i] = v
  if v then
    local sep = string.find(v, ':', 1, true)
    if not (sep and string.sub(v, 1, sep - 1) == token) then
      held_by_others[#held_by_others + 1] = i
    end
  end
end
if #held_by_others > 0 then
  local wait = 1
  for _, i in ipairs(held_by_others) do
    if ARGV[3] ~= '0' then
      redis.call('SET', KEYS[i * 3], '1', 'PX', ARGV[3])
    end
    wait = math.max(wait, redis.call('PTTL', KEYS[i * 3 - 2]))
  end
  return {0, wait}
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reply = {1}
for i = 1, n do
  local v = values[i]
  if v then
    -- Ours already (a resent call).
    redis.call('PEXPIRE', KEYS[i * 3 - 2], ARGV[2])
    reply[#reply + 1] = tonumber(string.sub(v, #token + 2))
  else
    local fence = string.format('%.0f',
      math.max((tonumber(redis.call('GET', KEYS[i * 3 - 1])) or 0) + 1, now_us))
    redis.call('SET', KEYS[i * 3 - 1], fence)
    redis.call('SET', KEYS[i * 3 - 2], token .. ':' .. fence, 'PX', ARGV[2])
    reply[#reply + 1] = tonumber(fence)
  end
end
return reply
