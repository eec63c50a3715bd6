-- Read-write lock: a waiter that gives up leaves the queue, and wakes whoever it was keeping
-- out (see rw_lib.lua).
-- ARGV[4]: "r" or "w". Reply: 1 when it was queued.
local me = ARGV[4] .. ':' .. token
local was = redis.call('ZREM', Q, me)
dequeue(me)
wake_ready()
return was
