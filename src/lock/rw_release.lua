-- Read-write lock: releases a read lease or the write lock, and wakes every waiter that may
-- enter now (see rw_lib.lua).
-- ARGV[4]: "r" or "w"; ARGV[5]: the writer's value ("token:fence"; for "w").
-- Reply: 1 when it was still held, 0 when it had expired or was gone.
local held = 0
if ARGV[4] == 'w' then
  if writer == ARGV[5] then
    redis.call('DEL', W)
    writer = false
    held = 1
    end_writer_turn()
  end
else
  local expiry = redis.call('ZSCORE', R, token)
  if expiry then
    redis.call('ZREM', R, token)
    held = 1
  end
end
wake_ready()
return held
