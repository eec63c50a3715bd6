-- Read-write lock: takes the write lock if nobody (reader or writer) holds it.
-- KEYS: writer, readers, intent, "someone waits" flag (see rw_read_acquire.lua).
-- ARGV: token, ttl (ms), wait window (ms; 0 when the caller will not wait).
-- Reply: {1, 0} when taken (or already ours), {0, wait_ms} when held. A waiting writer leaves
-- its intent, which keeps new readers out until it gets the lock or gives up (the intent
-- expires after the wait window).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local writer = redis.call('GET', KEYS[1])
if writer == ARGV[1] then
  return {1, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now))
local wait = nil
if writer then
  wait = redis.call('PTTL', KEYS[1])
elseif redis.call('ZCARD', KEYS[2]) > 0 then
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  wait = tonumber(last[2]) - now
end
if wait then
  if ARGV[3] ~= '0' then
    redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
    local intent = redis.call('GET', KEYS[3])
    if not intent or intent == ARGV[1] then
      redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
    end
  end
  return {0, math.max(1, wait)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return {1, 0}
