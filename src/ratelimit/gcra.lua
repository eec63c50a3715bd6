-- GCRA (generic cell rate algorithm), as go-redis/redis_rate does it, on the server's clock.
-- KEYS[1]: the subject's key (holds the theoretical arrival time, microseconds since 2017).
-- ARGV: burst, rate, period (microseconds), cost, at_most ("1": grant as many as fit, up to
-- cost). Reply: {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us, burst}.
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1483228800) * 1000000 + tonumber(t[2])
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local at_most = ARGV[5] == '1'

local interval = period / rate
local burst_offset = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
-- How many units fit now (a small epsilon absorbs floating point noise).
local fits = math.floor((now - (tat - burst_offset)) / interval + 1e-6)

if cost == 0 then
  -- A pure peek: no write, and never a wait (zero units always fit; go-redis/redis_rate's
  -- peek says the same). `remaining` tells whether the next unit would.
  return {0, math.max(fits, 0), 0, math.ceil(tat - now), burst}
end

if at_most then
  if fits < 1 then
    return {0, 0, math.ceil(tat - burst_offset + interval - now), math.ceil(tat - now), burst}
  end
  if cost > fits then
    cost = fits
  end
elseif cost > burst then
  return {0, math.max(fits, 0), -1, math.ceil(tat - now), burst}
elseif cost > fits then
  -- The earliest time at which `cost` units fit.
  return {0, math.max(fits, 0), math.ceil(tat + interval * cost - burst_offset - now),
    math.ceil(tat - now), burst}
end

local new_tat = tat + interval * cost
local reset_after = new_tat - now
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(reset_after / 1000)))
return {cost, fits - cost, 0, math.ceil(reset_after), burst}
