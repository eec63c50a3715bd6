-- GCRA in the shape of go-redis/redis_rate's allowN: times are float seconds since
-- 2017-01-01, the state is the theoretical arrival time in one string key, written with
-- SET .. EX; durations go back as strings.
-- KEYS[1]: the key. ARGV: burst, rate, period (seconds), cost.
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local interval = period / rate
local clock = redis.call('TIME')
local now = (clock[1] - 1483228800) + clock[2] / 1000000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local next_tat = tat + interval * cost
local diff = now - (next_tat - interval * burst)
if diff < 0 then
  return {0, 0, tostring(-diff), tostring(tat - now)}
end
local reset = next_tat - now
if reset > 0 then
  redis.call('SET', KEYS[1], next_tat, 'EX', math.ceil(reset))
end
return {cost, diff / interval, tostring(-1), tostring(reset)}
