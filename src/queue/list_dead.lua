-- Replays the oldest dead letters of a list queue (a record is
-- "\0rkd1\n<attempts>\n<error length>\n<error><payload>"): each payload goes back to the ready
-- list as a fresh item, atomically with its removal from the dead-letter list.
-- KEYS[1] dead-letter list, KEYS[2] ready list; ARGV[1] most records
-- Returns how many were replayed.
local n = 0
for _ = 1, tonumber(ARGV[1]) do
  local r = redis.call('RPOP', KEYS[1])
  if not r then
    break
  end
  local payload = r
  local a = string.find(r, '\n', 1, true)
  local b = a and string.find(r, '\n', a + 1, true)
  local c = b and string.find(r, '\n', b + 1, true)
  if c and string.sub(r, 1, a - 1) == '\0rkd1' then
    local len = tonumber(string.sub(r, b + 1, c - 1)) or 0
    payload = string.sub(r, c + 1 + len)
  end
  redis.call('LPUSH', KEYS[2], payload)
  n = n + 1
end
return n
