-- Several limits of any kind (GCRA, sliding log, sliding window, fixed window, token bucket)
-- checked and consumed together: all or nothing, on the server's clock, one script. Each kind
-- decides exactly as its own script does (gcra.lua, sliding_log.lua, sliding_window.lua,
-- fixed_window.lua, token_bucket.lua); here each is split into a check and a write, and the
-- writes happen only when every check passed.
-- KEYS[i]: the key of limit i.
-- ARGV[1]: cost (0: only look); then for each limit: kind ("g", "l", "s", "f" or "b") and three
-- numbers: GCRA burst, rate, period (us); window limit, period (us), 0; bucket capacity,
-- refill, per (us).
-- Reply: for each limit {granted, remaining, retry_after_us (-1 never, 0 now), reset_after_us,
-- limit}, flattened. When one limit denies, nothing is written anywhere, and each limit that
-- would have granted shows 0 granted and what remains without the request.
local t = redis.call('TIME')
local unix_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- GCRA keeps its time in microseconds since 2017, as go-redis/redis_rate does.
local gcra_now = (tonumber(t[1]) - 1483228800) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])

-- Each check returns: whether it passes, the reply when all pass, the reply when not, and
-- the write to make when all pass (nil for none).

local function gcra(key, burst, rate, period)
  local now = gcra_now
  local interval = period / rate
  local burst_offset = interval * burst
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then
    tat = now
  end
  local fits = math.floor((now - (tat - burst_offset)) / interval + 1e-6)
  local here = {0, math.max(fits, 0), 0, math.ceil(tat - now), burst}
  if cost == 0 then
    return true, here, here, nil
  end
  if cost > burst then
    here[3] = -1
    return false, nil, here, nil
  end
  if cost > fits then
    here[3] = math.ceil(tat + interval * cost - burst_offset - now)
    return false, nil, here, nil
  end
  local new_tat = tat + interval * cost
  local reset_after = new_tat - now
  local write = function()
    redis.call('SET', key, string.format('%.3f', new_tat), 'PX',
      math.max(1, math.ceil(reset_after / 1000)))
  end
  return true, {cost, fits - cost, 0, math.ceil(reset_after), burst}, here, write
end

local function sliding_log(key, limit, period)
  local now = unix_us
  local oldest = string.format('(%d', now - period)
  local count = redis.call('ZCOUNT', key, oldest, '+inf')
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local reset = 0
  if #newest > 0 then
    reset = math.max(0, tonumber(newest[2]) + period - now)
  end
  local here = {0, math.max(0, limit - count), 0, reset, limit}
  if cost == 0 then
    return true, here, here, nil
  end
  if cost > limit then
    here[3] = -1
    return false, nil, here, nil
  end
  if count + cost > limit then
    local e = redis.call('ZRANGEBYSCORE', key, oldest, '+inf', 'WITHSCORES', 'LIMIT',
      count + cost - limit - 1, 1)
    here[3] = math.max(1, tonumber(e[2]) + period - now)
    return false, nil, here, nil
  end
  local write = function()
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - period))
    local seq = count
    local batch = {}
    for _ = 1, cost do
      local member
      repeat
        member = string.format('%d-%d', now, seq)
        seq = seq + 1
      until not redis.call('ZSCORE', key, member)
      batch[#batch + 1] = now
      batch[#batch + 1] = member
      if #batch >= 1000 then
        redis.call('ZADD', key, unpack(batch))
        batch = {}
      end
    end
    if #batch > 0 then
      redis.call('ZADD', key, unpack(batch))
    end
  end
  local after = math.max(reset, period)
  return true, {cost, limit - count - cost, 0, after, limit}, here, function()
    write()
    redis.call('PEXPIRE', key, math.max(1, math.ceil(after / 1000)))
  end
end

local function sliding_window(key, limit, period)
  local now = unix_us
  local start = now - now % period
  local h = redis.call('HMGET', key, 'last', 'cur', 'prev')
  local last = tonumber(h[1])
  local cur, prev = 0, 0
  if last then
    local last_start = last - last % period
    if last_start >= start then
      cur, prev = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    elseif last_start == start - period then
      prev = tonumber(h[2]) or 0
    end
  end
  local elapsed = now - start
  local count = prev * (1 - elapsed / period) + cur
  local eps = 1e-9
  local function fits(c)
    return math.max(0, math.floor(limit - c + eps))
  end
  local function wait_for(k)
    local room = limit - k - cur
    if room >= 0 and prev > 0 then
      return math.max(1, math.ceil(period * (1 - room / prev) - elapsed))
    end
    local e = 0
    if cur > limit - k then
      e = period * (1 - (limit - k) / cur)
    end
    return math.max(1, math.ceil(start + period + e - now))
  end
  local function reset_after(c)
    if c > 0 then
      return start + 2 * period - now
    end
    if prev > 0 then
      return start + period - now
    end
    return 0
  end
  local here = {0, fits(count), 0, reset_after(cur), limit}
  if cost == 0 then
    return true, here, here, nil
  end
  if cost > limit then
    here[3] = -1
    return false, nil, here, nil
  end
  if count + cost > limit + eps then
    here[3] = wait_for(cost)
    return false, nil, here, nil
  end
  local new_cur = cur + cost
  local write = function()
    redis.call('HSET', key, 'last', now, 'cur', new_cur, 'prev', prev)
    redis.call('PEXPIRE', key, math.ceil((start + 2 * period - now) / 1000))
  end
  return true, {cost, fits(count + cost), 0, reset_after(new_cur), limit}, here, write
end

local function fixed_window(key, limit, period)
  local now = unix_us
  local start = now - now % period
  local window_end = start + period
  local h = redis.call('HMGET', key, 'last', 'count')
  local last = tonumber(h[1])
  local count = 0
  if last and last >= start then
    count = tonumber(h[2]) or 0
  end
  local reset = 0
  if count > 0 then
    reset = window_end - now
  end
  local here = {0, math.max(0, limit - count), 0, reset, limit}
  if cost == 0 then
    return true, here, here, nil
  end
  if cost > limit then
    here[3] = -1
    return false, nil, here, nil
  end
  if count + cost > limit then
    here[3] = window_end - now
    return false, nil, here, nil
  end
  local write = function()
    redis.call('HSET', key, 'last', now, 'count', count + cost)
    redis.call('PEXPIRE', key, math.ceil((window_end - now) / 1000))
  end
  return true, {cost, limit - count - cost, 0, window_end - now, limit}, here, write
end

local function token_bucket(key, capacity, refill, per)
  local now = unix_us
  local eps = 1e-6
  local function until_holds(have, want)
    if have >= want then
      return 0
    end
    return math.ceil((want - have) * per / refill)
  end
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = capacity
  elseif now > ts then
    tokens = tokens + (now - ts) * refill / per
  end
  if tokens > capacity then
    tokens = capacity
  end
  local whole = math.floor(tokens + eps)
  local here = {0, whole, 0, until_holds(tokens, capacity), capacity}
  if cost == 0 then
    return true, here, here, nil
  end
  if cost > capacity then
    here[3] = -1
    return false, nil, here, nil
  end
  if whole < cost then
    here[3] = math.max(1, until_holds(tokens, cost))
    return false, nil, here, nil
  end
  local left = math.max(0, tokens - cost)
  local reset_after = until_holds(left, capacity)
  local write = function()
    redis.call('HSET', key, 'tokens', string.format('%.17g', left), 'ts', string.format('%.0f', now))
    redis.call('PEXPIRE', key, math.max(1, math.ceil(reset_after / 1000)))
  end
  return true, {cost, math.floor(left + eps), 0, reset_after, capacity}, here, write
end

local kinds = {
  g = gcra,
  l = sliding_log,
  s = sliding_window,
  f = fixed_window,
  b = token_bucket,
}

local passed, denied, writes = {}, {}, {}
local all = true
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 4
  local check = kinds[ARGV[base + 1]]
  if not check then
    return redis.error_reply('ERR unknown limit kind ' .. tostring(ARGV[base + 1]))
  end
  local ok, yes, no, write = check(key, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
    tonumber(ARGV[base + 4]))
  passed[i], denied[i], writes[i] = yes, no, write
  if not ok then
    all = false
  end
end
local reply = {}
for i = 1, #KEYS do
  local d = denied[i]
  if all then
    d = passed[i]
    if writes[i] then
      writes[i]()
    end
  end
  for j = 1, 5 do
    reply[#reply + 1] = d[j]
  end
end
return reply
