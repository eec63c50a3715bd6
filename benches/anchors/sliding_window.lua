-- Cloudflare's sliding window counter: a counter per fixed window; the estimate is the
-- current count plus the previous one weighted by how much of it the sliding window covers.
-- KEYS[1]: the key's prefix (the window number is appended). ARGV: limit, period (ms).
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local window = math.floor(now / period)
local cur_key = KEYS[1] .. ':' .. window
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (window - 1))) or 0
local cur = tonumber(redis.call('GET', cur_key)) or 0
local weight = 1 - (now - window * period) / period
if prev * weight + cur + 1 > limit then
  return {0, 0}
end
redis.call('INCR', cur_key)
redis.call('PEXPIRE', cur_key, period * 2)
return {1, math.floor(limit - prev * weight - cur - 1)}
