-- Moves the due members of a delayed set to their ready queue, atomically: a member is
-- moved by exactly one caller however many schedulers run. Due is judged on the server's
-- clock. A member is "<origin>\n<attempt>\n<payload>".
-- KEYS[1] delayed set, KEYS[2] ready stream or list
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
    local attempt = string.sub(m, a + 1, b - 1)
    local payload = string.sub(m, b + 1)
    if ARGV[1] == 'list' then
      redis.call('LPUSH', KEYS[2], payload)
    else
      local args = {KEYS[2]}
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
