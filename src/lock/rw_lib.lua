-- Read-write lock: what every read-write script shares (each script is this file followed by
-- its own part). The policy is phase-fair: readers and writers take turns when both wait, so
-- neither starves.
--
-- KEYS[1]: the writer, "token:fence" with a ms expiry; KEYS[2]: the readers, a sorted set of
-- tokens scored by expiry (server ms); KEYS[3]: the queue of waiters, a sorted set of
-- "r:token" / "w:token" scored by arrival (server microseconds); KEYS[4]: when each waiter's
-- place lapses (server ms; a waiter renews it with every attempt, so one that died loses its
-- place); KEYS[5]: the phase, a hash {phase = "w" while a writer's turn is on, "r" after;
-- turn = the latest arrival whose readers go before any writer}; KEYS[6]: the fencing counter.
-- ARGV[1]: token; ARGV[2]: the prefix of the waiters' wake lists (a waiter blocks on the
-- prefix followed by its queue member); ARGV[3]: the wait window (ms).
--
-- Rules: a reader enters when no writer holds the lock and either it arrived by the turn
-- (the readers that waited through a writer's turn all go next, together) or no writer
-- waits. A writer enters when nobody holds the lock, no reader of the turn still waits, and
-- no writer arrived before it. When a writer's turn ends (a release or an expiry), the turn
-- moves to the latest arrival: every reader queued by then goes before the next writer.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local W, R, Q, QE, S, F = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, wake_prefix, window = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function fmt(x)
  return string.format('%.0f', x)
end

-- Expired readers and lapsed waiters go.
redis.call('ZREMRANGEBYSCORE', R, '-inf', fmt(now))
local gone = redis.call('ZRANGEBYSCORE', QE, '-inf', fmt(now))
if #gone > 0 then
  redis.call('ZREM', Q, unpack(gone))
  redis.call('ZREM', QE, unpack(gone))
end

local writer = redis.call('GET', W)
local st = redis.call('HMGET', S, 'phase', 'turn')
local phase, turn = st[1], tonumber(st[2]) or 0

local function is_reader(m)
  return string.sub(m, 1, 1) == 'r'
end

-- The writer's turn is over: every reader queued by now goes next.
local function end_writer_turn()
  local last = redis.call('ZRANGE', Q, -1, -1, 'WITHSCORES')
  if #last > 0 then
    turn = math.max(turn, tonumber(last[2]))
  end
  phase = 'r'
  redis.call('HSET', S, 'phase', 'r', 'turn', fmt(turn))
  redis.call('PEXPIRE', S, window)
end

local turn_ended = false
if not writer and phase == 'w' then
  end_writer_turn()
  turn_ended = true
elseif phase and redis.call('EXISTS', Q) == 1 then
  -- The turn matters while someone waits.
  redis.call('PEXPIRE', S, math.max(window, redis.call('PTTL', W)))
end

-- The first queued writer, or nil.
local function first_writer()
  local all = redis.call('ZRANGE', Q, 0, -1)
  for _, m in ipairs(all) do
    if not is_reader(m) then
      return m
    end
  end
  return nil
end

-- Whether a reader of the turn still waits (its phase comes before any writer's).
local function reader_of_the_turn_waits()
  local early = redis.call('ZRANGEBYSCORE', Q, '-inf', fmt(turn))
  for _, m in ipairs(early) do
    if is_reader(m) then
      return true
    end
  end
  return false
end

local function readers_hold()
  return redis.call('ZCARD', R) > 0
end

-- May a reader that arrived at `arrival` (nil: not queued) enter now?
local function reader_may(arrival)
  if writer then
    return false
  end
  if arrival and arrival <= turn then
    return true
  end
  return first_writer() == nil
end

-- May the writer queued as `me` (or not queued) enter now?
local function writer_may(me)
  if writer or readers_hold() or reader_of_the_turn_waits() then
    return false
  end
  local first = first_writer()
  return first == nil or first == me
end

local function wake(m)
  local k = wake_prefix .. m
  redis.call('RPUSH', k, '1')
  redis.call('LTRIM', k, -1, -1)
  redis.call('PEXPIRE', k, window)
end

-- Wakes every waiter that may enter now: all the readers that may, or else the first writer.
local function wake_ready()
  if writer then
    return
  end
  local all = redis.call('ZRANGE', Q, 0, -1, 'WITHSCORES')
  local first = nil
  for i = 1, #all, 2 do
    if not is_reader(all[i]) then
      first = all[i]
      break
    end
  end
  local woke = false
  for i = 1, #all, 2 do
    if is_reader(all[i]) and (first == nil or tonumber(all[i + 1]) <= turn) then
      wake(all[i])
      woke = true
    end
  end
  if not woke and first and not readers_hold() then
    wake(first)
  end
end

-- Queues `me` (keeping its arrival: the one it had, or `arrival` from an earlier place that
-- lapsed, or now), renews its place, and returns its arrival.
local function enqueue(me, arrival)
  local s = tonumber(redis.call('ZSCORE', Q, me))
  if not s then
    s = tonumber(arrival)
    if not s or s == 0 then
      s = now_us
    end
    redis.call('ZADD', Q, fmt(s), me)
  end
  redis.call('ZADD', QE, fmt(now + window), me)
  redis.call('PEXPIRE', Q, window)
  redis.call('PEXPIRE', QE, window)
  return s
end

-- Leaves the queue (entered, or gave up).
local function dequeue(me)
  redis.call('ZREM', Q, me)
  redis.call('ZREM', QE, me)
  redis.call('DEL', wake_prefix .. me)
end

-- The next fence: max(counter + 1, the server's clock in microseconds), as for a lock.
local function next_fence()
  local fence = fmt(math.max((tonumber(redis.call('GET', F)) or 0) + 1, now_us))
  redis.call('SET', F, fence)
  return tonumber(fence)
end

-- The readers' key lives as long as its longest lease.
local function expire_readers()
  local last = redis.call('ZRANGE', R, -1, -1, 'WITHSCORES')
  if #last > 0 then
    redis.call('PEXPIRE', R, math.max(1, tonumber(last[2]) - now))
  end
end

-- How long a waiter blocked now may sleep at most before asking again (a release wakes it
-- sooner): until the writer's lease or the longest reader's lease runs out.
local function hint()
  if writer then
    return math.max(1, redis.call('PTTL', W))
  end
  local last = redis.call('ZRANGE', R, -1, -1, 'WITHSCORES')
  if #last > 0 then
    return math.max(1, tonumber(last[2]) - now)
  end
  return 1
end
