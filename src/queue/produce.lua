-- Adds a job with options: to its priority's stream, or (with a delay) to the delayed set;
-- with a unique id, only when that id was not seen within the deduplication window.
-- KEYS[1] the level's stream, KEYS[2] delayed set, KEYS[3] the unique id's key
-- ARGV[1] window ms, ARGV[2] delay ms (-1: none), ARGV[3] MAXLEN ~ (0: none), ARGV[4] payload,
-- ARGV[5] headers (encoded, '' for none), ARGV[6] unique id ('' for none), ARGV[7] the
-- delayed-set member (with a delay)
-- Returns the entry id, '' when scheduled, nil when a duplicate was dropped.
if ARGV[6] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[1])) then
    return false
  end
end
local delay = tonumber(ARGV[2])
if delay >= 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, ARGV[7])
  return ''
end
local args = {KEYS[1]}
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, maxlen)
end
table.insert(args, '*')
table.insert(args, 'p')
table.insert(args, ARGV[4])
if ARGV[5] ~= '' then
  table.insert(args, 'h')
  table.insert(args, ARGV[5])
end
if ARGV[6] ~= '' then
  table.insert(args, 'i')
  table.insert(args, ARGV[6])
end
return redis.call('XADD', unpack(args))
