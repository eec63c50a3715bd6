-- Reads jobs for a consumer from the streams of a queue's priority levels, without blocking:
-- first each level's quota for this read (weighted priorities; all 0 for strict), then
-- whatever is left of the count, level by level, the first level first.
-- KEYS[1..n] the levels' streams (level 0 first)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[3 + i] level i-1's quota
-- Returns {level, entry, level, entry, ...}.
local left = tonumber(ARGV[3])
local out = {}
local function take(i, n)
  if n > left then
    n = left
  end
  if n <= 0 then
    return nil
  end
  local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', KEYS[i], '>')
  if type(r) ~= 'table' then
    return nil
  end
  if r.err then
    return r
  end
  for _, e in ipairs(r[1][2]) do
    out[#out + 1] = i - 1
    out[#out + 1] = e
    left = left - 1
  end
  return nil
end
for i = 1, #KEYS do
  local err = take(i, tonumber(ARGV[3 + i] or '0'))
  if err then
    return err
  end
end
for i = 1, #KEYS do
  local err = take(i, left)
  if err then
    return err
  end
end
return out
