-- Settles a stream message that was not handled successfully, atomically with its XACK:
-- retry later (into the delayed set), dead-letter it, or hand it back to the stream now.
-- Nothing happens unless this consumer still owned the message (XACK returned 1), so a
-- message claimed and finished by someone else meanwhile is never duplicated.
-- KEYS[1] stream, KEYS[2] destination (delayed set, dead-letter stream, or the stream)
-- ARGV[1] group, ARGV[2] id, ARGV[3] mode ('retry' | 'dead' | 'requeue'), ARGV[4] origin id,
-- ARGV[5] attempt, ARGV[6] payload (retry: the delayed-set member), ARGV[7] delay in ms
-- (retry) or error text (dead), ARGV[8] MAXLEN ~ for the destination stream (0: none),
-- ARGV[9] headers ('' for none), ARGV[10] unique id ('' for none), ARGV[11] priority level
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local mode = ARGV[3]
if mode == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), ARGV[6])
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
if ARGV[9] ~= '' then
  table.insert(args, 'h')
  table.insert(args, ARGV[9])
end
if ARGV[10] ~= '' then
  table.insert(args, 'i')
  table.insert(args, ARGV[10])
end
if mode == 'dead' then
  table.insert(args, 'e')
  table.insert(args, ARGV[7])
  table.insert(args, 'l')
  table.insert(args, ARGV[11])
end
redis.call('XADD', unpack(args))
return 1
