-- Leader election: the members seen within the presence ttl; writes nothing.
-- KEYS[1]: members (scored by last heartbeat, server ms). ARGV: presence ttl (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now - tonumber(ARGV[1])), '+inf')
