-- Write-behind: takes keys due for the store, leasing each to the caller: a key leased is not
-- taken by anyone else until the lease ends (then it is due again: its flusher died), so one
-- key never has two store writes in flight.
-- KEYS[1] values, KEYS[2] versions, KEYS[3] due, KEYS[4] leases (sorted set by lease end ms),
-- KEYS[5] lease owners (hash)
-- ARGV[1] most keys, ARGV[2] lease ms, ARGV[3] '1' to take keys not due yet too (a flush),
-- ARGV[4] the caller's token
-- Returns {key, value, version, key, value, version, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, k in ipairs(expired) do
  redis.call('ZREM', KEYS[4], k)
  redis.call('HDEL', KEYS[5], k)
  redis.call('ZADD', KEYS[3], now, k)
end
local most = tonumber(ARGV[1])
local upto = now
if ARGV[3] == '1' then
  upto = '+inf'
end
local candidates = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', upto, 'LIMIT', 0, most * 2)
local out = {}
local taken = 0
for _, k in ipairs(candidates) do
  if taken >= most then
    break
  end
  if not redis.call('ZSCORE', KEYS[4], k) then
    local value = redis.call('HGET', KEYS[1], k)
    redis.call('ZREM', KEYS[3], k)
    if value then
      redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), k)
      redis.call('HSET', KEYS[5], k, ARGV[4])
      out[#out + 1] = k
      out[#out + 1] = value
      out[#out + 1] = redis.call('HGET', KEYS[2], k) or '0'
      taken = taken + 1
    end
  end
end
return out
