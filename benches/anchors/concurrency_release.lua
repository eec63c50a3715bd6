-- Stripe's concurrent requests limiter: a finished request leaves the set.
-- KEYS[1]: the key. ARGV: request id.
return redis.call('ZREM', KEYS[1], ARGV[1])
