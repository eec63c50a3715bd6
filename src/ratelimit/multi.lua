-- Several GCRA limits checked and consumed together: all or nothing, on the server's clock.
-- KEYS[i]: the key of limit i. ARGV[1]: cost; then for each limit: burst, rate, period (us).
-- Reply: for each limit {allowed, remaining, retry_after_us (-1 never, 0 now), reset_after_us,
-- burst}, flattened. When one limit denies, nothing is written anywhere.
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1483228800) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local reply = {}
local writes = {}
local denied = false
for i, key in ipairs(KEYS) do
  local burst = tonumber(ARGV[i * 3 - 1])
  local rate = tonumber(ARGV[i * 3])
  local period = tonumber(ARGV[i * 3 + 1])
  local interval = period / rate
  local burst_offset = interval * burst
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then
    tat = now
  end
  local fits = math.floor((now - (tat - burst_offset)) / interval + 1e-6)
  local retry = 0
  if cost > burst then
    retry = -1
  elseif cost > fits or (cost == 0 and fits < 1) then
    retry = math.ceil(tat + interval * math.max(cost, 1) - burst_offset - now)
  end
  if retry ~= 0 then
    denied = true
    reply[#reply + 1] = 0
    reply[#reply + 1] = math.max(fits, 0)
    reply[#reply + 1] = retry
    reply[#reply + 1] = math.ceil(tat - now)
  else
    local new_tat = tat + interval * cost
    writes[#writes + 1] = {key, new_tat, new_tat - now}
    reply[#reply + 1] = cost
    reply[#reply + 1] = fits - cost
    reply[#reply + 1] = 0
    reply[#reply + 1] = math.ceil(new_tat - now)
  end
  reply[#reply + 1] = burst
end
if denied then
  -- Nothing was taken: report what each limit would have left.
  for i = 1, #KEYS do
    if reply[(i - 1) * 5 + 3] == 0 then
      reply[(i - 1) * 5 + 1] = 0
      reply[(i - 1) * 5 + 2] = reply[(i - 1) * 5 + 2] + cost
    end
  end
elseif cost > 0 then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], string.format('%.3f', w[2]), 'PX', math.max(1, math.ceil(w[3] / 1000)))
  end
end
return reply
