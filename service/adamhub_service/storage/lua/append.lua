-- Append steps to a session's log, all or nothing (group commit), or close a round.
--
-- KEYS[1]              the session's meta hash
-- KEYS[2]              the session's index of idempotency records
-- KEYS[3 .. 2+n]       each step's idempotency record (KEYS[1] again when it has none)
-- KEYS[3+n .. #KEYS]   the steps' gradient chunks, written just before with a TTL
-- ARGV[1]  expected rev
-- ARGV[2]  n, the number of steps;  ARGV[3] t before the first of them
-- ARGV[4]  the idempotency records' TTL in milliseconds
-- ARGV[5]  the bytes the steps add to the log
-- ARGV[6]  "" for steps; for the close of a round (one step, the round's mean), the
--          write ids of the contributions the mean holds, in order, space-separated: the
--          round must still hold exactly those, and is dropped with their gradients
-- ARGV[7 .. 6+n]      each step's log entry
-- ARGV[7+n .. 6+2n]   each step's idempotency record ("" = none)
-- ARGV[7+2n .. 6+3n]  each step's history point (JSON; "" = none)
-- ARGV[7+3n ..]       field, value pairs to set on the meta hash
--
-- Replies {1, new rev, log bytes since the newest snapshot} when committed;
-- {2, j, record} when step j's idempotency key is recorded already (nothing written);
-- {3} the rev moved on, or the round changed; {4} no such session; {6} a chunk expired.
local meta, index = KEYS[1], KEYS[2]
local n, t0, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local entries, records, points = 6, 6 + n, 6 + 2 * n

for j = 1, n do
  if ARGV[records + j] ~= '' then
    local record = redis.call('GET', KEYS[2 + j])
    if record then
      return {REPLAYED, j, record}
    end
  end
end
local refused = refusal(meta, ARGV[1])
if refused then
  return {refused}
end
local prefix = prefix_of(meta)
if ARGV[6] ~= '' then
  local round = prefix .. 'round'
  local base, held = unpack(redis.call('HMGET', round, 'base', 'n'))
  if base ~= tostring(t0) then
    return {CONFLICT}
  end
  local j = 0
  for write_id in string.gmatch(ARGV[6], '%S+') do
    j = j + 1
    local entry = redis.call('HGET', round, tostring(j))
    if not entry or entry_write_id(entry) ~= write_id then
      return {CONFLICT}
    end
  end
  if tostring(j) ~= held then
    return {CONFLICT}
  end
end
if not persist(3 + n, #KEYS) then
  return {EXPIRED}
end
migrate(meta)
if ARGV[6] ~= '' then
  discard_round(prefix, chunk_count(meta))
end

local log = prefix .. 'log'
for j = 1, n do
  redis.call('HSET', log, tostring(t0 + j), ARGV[entries + j])
end
if #ARGV > points + n then
  redis.call('HSET', meta, unpack(ARGV, points + n + 1))
end
for j = 1, n do
  if ARGV[points + j] ~= '' then
    add_point(meta, t0 + j, ARGV[points + j])
  end
end
local new_rev = redis.call('HINCRBY', meta, 'rev', 1)
local log_bytes = redis.call('HINCRBY', meta, 'log_bytes', tonumber(ARGV[5]))
for j = 1, n do
  if ARGV[records + j] ~= '' then
    record_idempotency(index, KEYS[2 + j], ARGV[records + j], ttl)
  end
end
publish_t(meta)
return {COMMITTED, new_rev, log_bytes}
