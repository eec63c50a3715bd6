-- A user's live sessions: prunes ids whose session expired; with ARGV[2] = "1", destroys
-- every live session and the index instead.
-- KEYS[1] user index set; ARGV[1] session key prefix (`...:s:{<shard>}:`), ARGV[2] "1" to destroy.
-- Returns the live ids (or, destroying, how many sessions were destroyed).
local ids = redis.call('SMEMBERS', KEYS[1])
local live = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    live[#live + 1] = id
  else
    redis.call('SREM', KEYS[1], id)
  end
end
if ARGV[2] == '1' then
  for _, id in ipairs(live) do
    redis.call('DEL', ARGV[1] .. id)
  end
  redis.call('DEL', KEYS[1])
  return #live
end
return live
