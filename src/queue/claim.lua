-- Claims idle pending entries of a stream for a consumer on servers before 7.0 (6.0 has no
-- XAUTOCLAIM; 6.2's replies nil for a deleted entry without naming it, and keeps it pending).
-- Replies like 7.0's XAUTOCLAIM: {next cursor, entries, ids of deleted entries}. A pending
-- entry whose stream entry was trimmed (MAXLEN) or deleted (XDEL) is acknowledged, since no
-- consumer can ever run it, and listed as deleted.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] first id to look at,
-- ARGV[5] how many to claim at most (looks at 10 times as many pending entries, as XAUTOCLAIM)
local idle = tonumber(ARGV[3])
local count = tonumber(ARGV[5])
local scan = count * 10
local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[4], '+', scan + 1)
if rows.err then
  return rows
end
local entries, deleted = {}, {}
local taken = 0
local cursor = '0-0'
for i, row in ipairs(rows) do
  if i > scan or taken >= count then
    cursor = row[1]
    break
  end
  if tonumber(row[3]) >= idle then
    taken = taken + 1
    -- One id per call, so that a nil in the reply names its entry.
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], idle, row[1])
    local entry = got[1]
    if type(entry) == 'table' then
      entries[#entries + 1] = entry
    elseif entry == false then
      redis.call('XACK', KEYS[1], ARGV[1], row[1])
      deleted[#deleted + 1] = row[1]
    end
  end
end
return {cursor, entries, deleted}
