-- Read-write lock: takes a read lease (see rw_lib.lua for the keys and the rules).
-- ARGV[4]: ttl (ms); ARGV[5]: our arrival from an earlier attempt (0: none); ARGV[6]: "1" when
-- the caller waits (then it queues), "0" when it does not.
-- Reply: {1, fence} when taken (or already ours: a resent call renews it and gets a new fence,
-- as the caller never saw the first), {0, wait_ms, arrival} otherwise.
local me = 'r:' .. token
local mine = redis.call('ZSCORE', R, token)
local arrival = tonumber(redis.call('ZSCORE', Q, me))
if not arrival and ARGV[5] ~= '0' then
  arrival = tonumber(ARGV[5])
end
if mine or reader_may(arrival) then
  redis.call('ZADD', R, fmt(now + tonumber(ARGV[4])), token)
  expire_readers()
  dequeue(me)
  local fence = next_fence()
  if turn_ended then
    wake_ready()
  end
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
