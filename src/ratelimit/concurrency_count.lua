-- Concurrency limiter: how many leases are held (not expired) now; writes nothing.
-- KEYS[1]: the sorted set of lease ids scored by expiry (server microseconds since the Unix epoch).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
