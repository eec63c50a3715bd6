-- Read-write lock: takes the write lock (see rw_lib.lua for the keys and the rules).
-- ARGV[4]: ttl (ms); ARGV[5]: our arrival from an earlier attempt (0: none); ARGV[6]: "1" when
-- the caller waits (then it queues, and keeps new readers out), "0" when it does not.
-- Reply: {1, fence} when taken (or already ours), {0, wait_ms, arrival} otherwise.
local me = 'w:' .. token
if writer then
  local sep = string.find(writer, ':', 1, true)
  if sep and string.sub(writer, 1, sep - 1) == token then
    redis.call('PEXPIRE', W, ARGV[4])
    return {1, tonumber(string.sub(writer, sep + 1))}
  end
end
if writer_may(me) then
  local fence = next_fence()
  redis.call('SET', W, token .. ':' .. fmt(fence), 'PX', ARGV[4])
  dequeue(me)
  redis.call('HSET', S, 'phase', 'w')
  redis.call('PEXPIRE', S, math.max(window, tonumber(ARGV[4])))
  return {1, fence}
end
local queued = 0
if ARGV[6] == '1' then
  queued = enqueue(me, ARGV[5])
end
if turn_ended then
  wake_ready()
end
return {0, hint(), queued}
