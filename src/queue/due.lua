-- Moves the due members of a delayed set to their ready queue, atomically: a member is
-- moved by exactly one caller however many schedulers run. Due is judged on the server's
-- clock. A member is "<origin>\n<attempt>\n<payload>", or
-- "<origin>\n<attempt>;<level>;<headers length>;<id length>\n<headers><id><payload>".
-- KEYS[1] delayed set, KEYS[2..] the ready stream of each priority level (first: level 0),
-- or the ready list
-- ARGV[1] 'stream' | 'list', ARGV[2] most members to move, ARGV[3] MAXLEN ~ (0: none)
-- Returns {moved, ms until the next member is due (-1: none left)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local maxlen = tonumber(ARGV[3])
local moved = 0
for _, m in ipairs(due) do
  local a = string.find(m, '\n', 1, true)
  local b = a and string.find(m, '\n', a + 1, true)
  if b then
    local origin = string.sub(m, 1, a - 1)
    local meta = string.sub(m, a + 1, b - 1)
    local attempt, level, headers, id = meta, 0, '', ''
    local pos = b + 1
    local at, lv, hl, il = string.match(meta, '^(%d+);(%d+);(%d+);(%d+)$')
    if at then
      attempt, level = at, tonumber(lv)
      hl, il = tonumber(hl), tonumber(il)
      headers = string.sub(m, pos, pos + hl - 1)
      id = string.sub(m, pos + hl, pos + hl + il - 1)
      pos = pos + hl + il
    end
    local payload = string.sub(m, pos)
    if ARGV[1] == 'list' then
      redis.call('LPUSH', KEYS[2], payload)
    else
      local args = {KEYS[2 + level] or KEYS[2]}
      if maxlen > 0 then
        table.insert(args, 'MAXLEN')
        table.insert(args, '~')
        table.insert(args, maxlen)
      end
      table.insert(args, '*')
      table.insert(args, 'p')
      table.insert(args, payload)
      if attempt ~= '0' then
        table.insert(args, 'o')
        table.insert(args, origin)
        table.insert(args, 'a')
        table.insert(args, attempt)
      end
      if headers ~= '' then
        table.insert(args, 'h')
        table.insert(args, headers)
      end
      if id ~= '' then
        table.insert(args, 'i')
        table.insert(args, id)
      end
      redis.call('XADD', unpack(args))
    end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {moved, math.max(0, tonumber(nxt[2]) - now)}
end
return {moved, -1}
