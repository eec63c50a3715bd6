-- Read-write lock: takes a read lease if no writer holds the lock or waits for it.
-- KEYS[1]: the writer (a token with a ms expiry); KEYS[2]: the readers, a sorted set of tokens
-- scored by expiry (server ms); KEYS[3]: a waiting writer's intent (a token with a ms expiry);
-- KEYS[4]: the "someone waits" flag.
-- ARGV: token, ttl (ms), wait window (ms; 0 when the caller will not wait).
-- Reply: {1, readers} when taken (or already ours), {0, wait_ms} when a writer holds the lock or
-- waits for it (new readers stay out so that the writer is not starved).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not mine then
  local blocker = nil
  if redis.call('EXISTS', KEYS[1]) == 1 then
    blocker = KEYS[1]
  elseif redis.call('EXISTS', KEYS[3]) == 1 then
    blocker = KEYS[3]
  end
  if blocker then
    if ARGV[3] ~= '0' then
      redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])
    end
    return {0, math.max(1, redis.call('PTTL', blocker))}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now))
redis.call('ZADD', KEYS[2], string.format('%.0f', now + ttl), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[2], math.max(1, tonumber(last[2]) - now))
return {1, redis.call('ZCARD', KEYS[2])}
