-- Write-behind: records the latest value of a key for the store, coalesced: one entry per key
-- however many writes, due for the store after the delay (counted from the first write since
-- its last store write, so that a key written all the time is still stored).
-- KEYS[1] values (hash), KEYS[2] versions (hash), KEYS[3] due (sorted set by ms), KEYS[4]
-- the version counter
-- ARGV[1] key, ARGV[2] value, ARGV[3] delay ms
-- Returns the write's version (increasing over every key, never reused).
local v = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], v)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[3]), ARGV[1])
return v
