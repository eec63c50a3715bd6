-- Removes from a queue's group the consumers idle for at least ARGV[2] ms that have nothing
-- pending (XGROUP DELCONSUMER), atomically with that check: a consumer that took a job
-- meanwhile is kept (removing it would drop its pending entries).
-- KEYS[1..n] the levels' streams; ARGV[1] group, ARGV[2] idle ms
-- Returns the names removed (a name once per stream it was removed from).
local limit = tonumber(ARGV[2])
local removed = {}
for _, key in ipairs(KEYS) do
  local rows = redis.pcall('XINFO', 'CONSUMERS', key, ARGV[1])
  if type(rows) == 'table' and not rows.err then
    for _, c in ipairs(rows) do
      local name, pending, idle
      for i = 1, #c, 2 do
        if c[i] == 'name' then
          name = c[i + 1]
        elseif c[i] == 'pending' then
          pending = c[i + 1]
        elseif c[i] == 'idle' then
          idle = c[i + 1]
        end
      end
      if name and pending == 0 and idle and idle >= limit then
        redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], name)
        removed[#removed + 1] = name
      end
    end
  end
end
return removed
