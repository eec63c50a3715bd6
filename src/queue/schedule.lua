-- Adds a member to a delayed set, due after ARGV[1] ms on the server's clock.
-- KEYS[1] delayed set; ARGV[1] delay in ms, ARGV[2] member
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return now + tonumber(ARGV[1])
