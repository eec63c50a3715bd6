-- Replays or purges dead letters in a range, atomically per entry: a replayed job goes back
-- to its priority level's stream as a fresh job (attempt 0, every retry again; origin,
-- headers and unique id kept) and leaves the dead-letter stream, so replaying twice never
-- runs it twice.
-- KEYS[1] dead-letter stream, KEYS[2..] the levels' streams (level 0 first)
-- ARGV[1] 'replay' | 'purge', ARGV[2] first id, ARGV[3] last id, ARGV[4] most entries,
-- ARGV[5] MAXLEN ~ (0: none)
-- Returns {how many, the last id done ('' for none)}.
local rows = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[3], 'COUNT', tonumber(ARGV[4]))
local maxlen = tonumber(ARGV[5])
local n, last = 0, ''
for _, row in ipairs(rows) do
  local id, f = row[1], row[2]
  last = id
  if ARGV[1] == 'replay' then
    local fields = {}
    for i = 1, #f, 2 do
      fields[f[i]] = f[i + 1]
    end
    local level = tonumber(fields['l'] or '0') or 0
    local args = {KEYS[2 + level] or KEYS[2]}
    if maxlen > 0 then
      table.insert(args, 'MAXLEN')
      table.insert(args, '~')
      table.insert(args, maxlen)
    end
    table.insert(args, '*')
    table.insert(args, 'p')
    table.insert(args, fields['p'] or '')
    if fields['o'] then
      table.insert(args, 'o')
      table.insert(args, fields['o'])
    end
    if fields['h'] then
      table.insert(args, 'h')
      table.insert(args, fields['h'])
    end
    if fields['i'] then
      table.insert(args, 'i')
      table.insert(args, fields['i'])
    end
    redis.call('XADD', unpack(args))
  end
  redis.call('XDEL', KEYS[1], id)
  n = n + 1
end
return {n, last}
