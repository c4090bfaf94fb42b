-- Look at the open round of a rounds session, and seal it for closing when it is due:
-- past its deadline with enough contributions, or sealed by a closer that has not
-- closed it within the grace (it died: another takes over). A round with contributions
-- held in a process's memory is closed by that process (its holder) only; a look by
-- the holder renews its lease, and contributions of a holder whose lease lapsed are
-- taken out (purge_lapsed).
--
-- KEYS[1]  the session's meta hash
-- ARGV[1]  the round's base (the t it steps from);  ARGV[2]  the grace in milliseconds
-- ARGV[3]  the caller's token ("" = none);  ARGV[4]  the holder's lease in milliseconds
--
-- Replies {1, n, samples} sealed for this caller: the caller closes the round with its n
-- contributions; {0, n, samples, first_ms, sealed_ms, now_ms, lease_ms, held, holds} not
-- for this caller to close (0 for what is unset; holds: 1 when the caller holds some); {10, why} no round is open at that base
-- because one was dropped there (drop.lua); {3} the session is no longer at that base;
-- {4} no such session.
local meta, caller = KEYS[1], ARGV[3]
local t, rules = unpack(redis.call('HMGET', meta, 't', 'rounds'))
if not t then
  return {GONE}
end
if t ~= ARGV[1] then
  return {CONFLICT}
end
local now = now_ms()
purge_lapsed(meta, now)
local round = prefix_of(meta) .. 'round'
local base, n, samples, first_ms, sealed, holder, held, lease = unpack(redis.call(
  'HMGET', round, 'base', 'n', 'samples', 'first_ms', 'sealed_ms', 'holder', 'held', 'lease_ms'
))
if base ~= t then
  local dropped = redis.call('GET', prefix_of(meta) .. 'dropped')
  if dropped and string.match(dropped, '^(%d+)') == t then
    return {DROPPED, string.match(dropped, '^%d+ (.*)$')}
  end
  return {0, 0, 0, 0, 0, now, 0, 0, 0}
end
n, samples, first_ms, held = tonumber(n), tonumber(samples), tonumber(first_ms), tonumber(held or '0')
local holds = held > 0 and holder == caller
if holds then
  lease = now + tonumber(ARGV[4])
  redis.call('HSET', round, 'lease_ms', lease)
end
lease = tonumber(lease or '0')
local closer = held == 0 or holds
if sealed then
  if holds or (closer and now - tonumber(sealed) >= tonumber(ARGV[2])) then
    redis.call('HSET', round, 'sealed_ms', now)
    return {1, n, samples}
  end
  return {0, n, samples, first_ms, tonumber(sealed), now, lease, held, holds and 1 or 0}
end
local rule = cjson.decode(rules)
local timeout = rule['timeout_seconds']
if timeout and now >= first_ms + timeout * 1000 and n >= (rule['min_contributions'] or 1) then
  redis.call('HSET', round, 'sealed_ms', now)
  if closer then
    return {1, n, samples}
  end
  publish_t(meta) -- the holder closes it: wake it
  return {0, n, samples, first_ms, now, now, lease, held, 0}
end
return {0, n, samples, first_ms, 0, now, lease, held, holds and 1 or 0}
