-- Settles a stream message that was not handled successfully, atomically with its XACK:
-- retry later (into the delayed set), dead-letter it, or hand it back to the stream now.
-- Nothing happens unless this consumer still owned the message (XACK returned 1), so a
-- message claimed and finished by someone else meanwhile is never duplicated.
-- KEYS[1] stream, KEYS[2] destination (delayed set, dead-letter stream, or the stream)
-- ARGV[1] group, ARGV[2] id, ARGV[3] mode ('retry' | 'dead' | 'requeue'), ARGV[4] origin id,
-- ARGV[5] attempt, ARGV[6] payload, ARGV[7] delay in ms (retry) or error text (dead),
-- ARGV[8] MAXLEN ~ for the destination stream (0: none)
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local mode = ARGV[3]
if mode == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[6])
  return 1
end
local args = {KEYS[2]}
local maxlen = tonumber(ARGV[8])
if maxlen > 0 then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, maxlen)
end
table.insert(args, '*')
table.insert(args, 'p')
table.insert(args, ARGV[6])
table.insert(args, 'o')
table.insert(args, ARGV[4])
table.insert(args, 'a')
table.insert(args, ARGV[5])
if mode == 'dead' then
  table.insert(args, 'e')
  table.insert(args, ARGV[7])
end
redis.call('XADD', unpack(args))
return 1
