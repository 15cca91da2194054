"""The Lua scripts of the event log (``runs.streams.event_log``): each runs atomically in Redis
on the two keys of one run (its stream and its meta hash, in one hash slot)."""

# Every script starts with these helpers. KEYS[1] is the run's stream, KEYS[2] its meta hash:
# ``seq`` (the id counter), ``attempt`` (the owner token of the attempt that opened the stream),
# ``closed`` (who closed it: an owner token, or ``*`` for a cancel or the sweeper), ``final``
# (the first id the last close reserved), ``cancel``, and ``p:<producer>`` (the sequence and ids
# of a producer's last append, so that its retry appends nothing twice).
PRELUDE = """
local stream, meta = KEYS[1], KEYS[2]

local function raise_floor(floor)
  floor = tonumber(floor)
  if tonumber(redis.call('HGET', meta, 'seq') or '0') < floor then
    redis.call('HSET', meta, 'seq', floor)
  end
end

local function top_id()
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #top == 0 then return 0 end
  return tonumber(string.match(top[1][1], '%-(%d+)$'))
end

-- An attempt closed the stream to finish, and its final events never came (it died, or
-- another ended the run): the ids it reserved are handed out again, so that none is skipped.
local function release_reserved()
  local closer = redis.call('HGET', meta, 'closed')
  if closer and closer ~= '*' then
    local final = tonumber(redis.call('HGET', meta, 'final') or '0')
    if final > top_id() then redis.call('HSET', meta, 'seq', final - 1) end
  end
end

-- The events of one call travel as three arguments whatever their number: how many, their
-- types and their payloads, each joined by newlines (compact JSON never holds a raw newline,
-- and event types are identifiers). One counter increment reserves all their ids.
local function add_events(created, count, types, payloads)
  count = tonumber(count)
  local last = redis.call('HINCRBY', meta, 'seq', count)
  local first = last - count + 1
  local t, p = 1, 1
  for n = first, last do
    local t_end = string.find(types, '\\n', t, true) or (#types + 1)
    local p_end = string.find(payloads, '\\n', p, true) or (#payloads + 1)
    redis.call('XADD', stream, '0-' .. n, 't', string.sub(types, t, t_end - 1),
      'p', string.sub(payloads, p, p_end - 1), 'c', created)
    t, p = t_end + 1, p_end + 1
  end
  return first, last
end

local function before(first)
  return redis.call('XRANGE', stream, '-', '0-' .. (first - 1))
end
"""

# ARGV: created, floor, producer, its sequence, count, types, payloads. Refused ({}) once the
# stream is closed. A producer's append whose sequence equals its last one's is a retry of
# that call (its answer was lost): it answers the same ids and appends nothing.
APPEND = (
    PRELUDE
    + """
if redis.call('HGET', meta, 'closed') then return {} end
local producer = ARGV[3]
if producer ~= '' then
  local prev = redis.call('HGET', meta, 'p:' .. producer)
  if prev then
    local s, f, l = string.match(prev, '^(.*) (%d+) (%d+)$')
    if s == ARGV[4] then return {tonumber(f), tonumber(l)} end
  end
end
raise_floor(ARGV[2])
local first, last = add_events(ARGV[1], ARGV[5], ARGV[6], ARGV[7])
if producer ~= '' then
  redis.call('HSET', meta, 'p:' .. producer, ARGV[4] .. ' ' .. first .. ' ' .. last)
end
return {first, last}
"""
)

# ARGV: created, floor, owner, count, types, payloads. An attempt opens the stream: unless
# the run ended (cancelled, ended by the sweeper, or its final events are in the stream), it
# accepts appends again (an earlier attempt may have closed it and died before its record
# landed), and it is this owner's; then its opening events are appended, all in one round
# trip. Opened by this owner already (a retry): {0, 0}.
OPEN = (
    PRELUDE
    + """
local closer = redis.call('HGET', meta, 'closed')
if redis.call('HGET', meta, 'cancel') or closer == '*' then return {} end
if redis.call('HGET', meta, 'attempt') == ARGV[3] then return {0, 0} end
if closer and tonumber(redis.call('HGET', meta, 'final') or '0') <= top_id() then return {} end
release_reserved()
redis.call('HDEL', meta, 'closed')
redis.call('HSET', meta, 'attempt', ARGV[3])
raise_floor(ARGV[2])
local first, last = add_events(ARGV[1], ARGV[4], ARGV[5], ARGV[6])
return {first, last}
"""
)

# ARGV: count, cancel, floor, owner. Refuses appends from now on and reserves ``count`` ids
# for the final events; answers the first of them and the events before it. With an owner,
# on behalf of the attempt that finishes the run: refused (0) when the stream was closed by
# another (a cancel, the sweeper) or belongs to another attempt; closed by this owner
# already (a retry), it answers that close's reservation again.
CLOSE = (
    PRELUDE
    + """
local closer = redis.call('HGET', meta, 'closed')
if ARGV[4] ~= '' then
  if closer then
    if closer ~= ARGV[4] then return 0 end
    local final = tonumber(redis.call('HGET', meta, 'final'))
    return {final, before(final)}
  end
  local owner = redis.call('HGET', meta, 'attempt')
  if owner and owner ~= ARGV[4] then return 0 end
else
  release_reserved()
end
raise_floor(ARGV[3])
redis.call('HSET', meta, 'closed', ARGV[4] ~= '' and ARGV[4] or '*')
if ARGV[2] == '1' then redis.call('HSET', meta, 'cancel', '1') end
local last = redis.call('HINCRBY', meta, 'seq', tonumber(ARGV[1]))
local first = last - tonumber(ARGV[1]) + 1
redis.call('HSET', meta, 'final', first)
return {first, before(first)}
"""
)

# ARGV: ttl, then id, type, payload, created of each final event. Events already in the
# stream (a retried publish) are not added twice.
PUBLISH = (
    PRELUDE
    + """
local top = top_id()
for i = 2, #ARGV, 4 do
  if tonumber(ARGV[i]) > top then
    redis.call('XADD', stream, '0-' .. ARGV[i], 't', ARGV[i + 1], 'p', ARGV[i + 2],
      'c', ARGV[i + 3])
  end
end
redis.call('EXPIRE', stream, ARGV[1])
redis.call('EXPIRE', meta, ARGV[1])
return 1
"""
)
