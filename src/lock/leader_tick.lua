-- Leader election: one member's heartbeat. Records its presence, renews its leadership, or
-- campaigns for it when nobody leads.
-- KEYS[1]: members, a sorted set of ids scored by last heartbeat (server ms); KEYS[2]: the
-- leader, "term:token:id" with a ms expiry; KEYS[3]: the term counter (never expires).
-- ARGV: member id, member token, leader ttl (ms), presence ttl (ms), campaign (1 or 0).
-- Reply: {1, term, 0} when this member leads, {0, term, pttl} when another does (pttl: time
-- until its lease runs out), {0, 0, 0} when nobody leads and we did not campaign.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local presence = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - presence))
redis.call('PEXPIRE', KEYS[1], presence * 2)
local v = redis.call('GET', KEYS[2])
if v then
  local sep = string.find(v, ':', 1, true)
  local term = tonumber(string.sub(v, 1, sep - 1))
  local rest = string.sub(v, sep + 1)
  local sep2 = string.find(rest, ':', 1, true)
  if string.sub(rest, 1, sep2 - 1) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return {1, term, 0}
  end
  return {0, term, redis.call('PTTL', KEYS[2])}
end
if ARGV[5] == '1' then
  -- max(counter + 1, the server's clock in microseconds), as a lock's fence: terms never go
  -- back, even when the counter was lost.
  local term = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[3])) or 0) + 1,
    tonumber(t[1]) * 1000000 + tonumber(t[2])))
  redis.call('SET', KEYS[3], term)
  redis.call('SET', KEYS[2], term .. ':' .. ARGV[2] .. ':' .. ARGV[1], 'PX', ARGV[3])
  return {1, tonumber(term), 0}
end
return {0, 0, 0}
