-- A heartbeat: restarts the idle time of a pending stream entry, if (and only if) this
-- consumer still owns it, so that it is not claimed by another while its handler runs.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id
-- Returns 1 when extended, 0 when the entry is no longer this consumer's.
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
local row = rows[1]
if not row or row[1] ~= ARGV[3] or row[2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
