-- Replays one dead letter of a list queue: removes the record, pushes its payload to the ready
-- list, atomically. KEYS[1] dead-letter list, KEYS[2] ready list; ARGV[1] the record,
-- ARGV[2] the payload. Returns 1, or 0 when the record was not there.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
