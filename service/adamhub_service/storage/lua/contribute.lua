-- Add a contribution to the open round of a rounds session.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2]            the session's index of idempotency records
-- KEYS[3]            the contribution's idempotency record (KEYS[1] again when none)
-- KEYS[4 .. #KEYS]   the contribution's gradient chunks, written just before with a TTL
--                    (none when the caller holds it)
-- ARGV[1]  the step the gradient was computed at ("" = the open round's)
-- ARGV[2]  the round entry: "<write id> <dtype> <bytes> <samples> <loss>[ <optimizer json>]"
-- ARGV[3]  samples;  ARGV[4] the gradient's digest ("" = no idempotency key)
-- ARGV[5]  the idempotency record's TTL in milliseconds
-- ARGV[6]  "" when the gradient is stored (its chunks); else the token of the process
--          that holds it in memory (its worker waits for the round)
-- ARGV[7]  the holder's lease in milliseconds
--
-- The round is the one that steps from the session's t; its contribution j is the j-th
-- taken, the order in which the round's mean sums them. The idempotency record says
-- the step the round will produce (t + 1). A round's held contributions are all held by
-- one process: another holder's gradient is refused as {11} and comes again stored.
-- Contributions held by a holder whose lease lapsed are taken out first (purge_lapsed).
-- Replies {1, t, n, samples, complete (0/1), first_ms, now_ms} taken; {2, record} the key is
-- recorded already; {4} no such session; {6} a chunk expired; {8, t} the gradient is
-- for another step than the open round's; {9, t} the round is sealed (full, or being
-- closed at its deadline) and takes no more; {11, t} another process holds contributions
-- of the round. Only {1} writes anything, besides a purge.
local meta, index, idem = KEYS[1], KEYS[2], KEYS[3]
local holder, now = ARGV[6], now_ms()
local t, rules = unpack(redis.call('HMGET', meta, 't', 'rounds'))
if not t then
  return {GONE}
end
purge_lapsed(meta, now)
if ARGV[4] ~= '' then
  local record = redis.call('GET', idem)
  if record then
    return {REPLAYED, record}
  end
end
if ARGV[1] ~= '' and ARGV[1] ~= t then
  return {STALE, t}
end
local prefix = prefix_of(meta)
local round = prefix .. 'round'
local base, first_ms, sealed, holding, held =
  unpack(redis.call('HMGET', round, 'base', 'first_ms', 'sealed_ms', 'holder', 'held'))
if base and base ~= t then
  -- left by a round the session went past without it (a reset or rollback)
  discard_round(prefix, chunk_count(meta))
  base, holding, held = nil, nil, nil
end
if sealed then
  return {SEALED, t}
end
held = tonumber(held or '0')
if holder ~= '' then
  if held > 0 and holding ~= holder then
    return {ELSEWHERE, t}
  end
elseif not persist(4, #KEYS) then
  return {EXPIRED}
end
if not base then
  first_ms = now
  redis.call('HSET', round, 'base', t, 'n', 0, 'samples', 0, 'first_ms', first_ms)
end
local n = redis.call('HINCRBY', round, 'n', 1)
local samples = redis.call('HINCRBY', round, 'samples', tonumber(ARGV[3]))
redis.call('HSET', round, tostring(n), ARGV[2])
if holder ~= '' then
  held = redis.call('HINCRBY', round, 'held', 1)
  redis.call('HSET', round, 'holder', holder, 'lease_ms', now + tonumber(ARGV[7]), 'm' .. n, 1)
  if ARGV[4] ~= '' then
    redis.call('HSET', round, 'k' .. n, idem)
  end
  holding = holder
end
if ARGV[4] ~= '' then
  record_idempotency(index, idem, ARGV[4] .. ':' .. (tonumber(t) + 1), tonumber(ARGV[5]))
end
local rule = cjson.decode(rules)
local timeout = rule['timeout_seconds']
local complete = (rule['contributions'] and n >= rule['contributions'])
  or (rule['target_samples'] and samples >= rule['target_samples'])
  -- the one the deadline waited for
  or (timeout and now >= tonumber(first_ms) + timeout * 1000 and n >= rule['min_contributions'])
if complete then
  redis.call('HSET', round, 'sealed_ms', now)
  if held > 0 and holding ~= holder then
    publish_t(meta) -- the holder closes it: wake it
  end
end
return {COMMITTED, t, n, samples, complete and 1 or 0, tonumber(first_ms), now}
