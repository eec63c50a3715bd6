-- Semaphore: how many permits are held (not expired) now; writes nothing.
-- KEYS[1]: the sorted set of permit ids scored by expiry (server ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
