-- Settles a list-queue item that failed, atomically with its removal from the consumer's
-- processing list: retry later (into the delayed set) or dead-letter it. Nothing happens
-- unless the item was still there (a reaper may have given it back meanwhile).
-- KEYS[1] processing list, KEYS[2] delayed set (retry) or dead-letter list (dead)
-- ARGV[1] the item as taken, ARGV[2] 'retry' | 'dead', ARGV[3] delay ms (retry),
-- ARGV[4] what to add (retry: the delayed-set member; dead: the dead-letter record)
-- Returns 1 when settled, 0 when the item was not in the processing list.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if ARGV[2] == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
else
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
return 1
