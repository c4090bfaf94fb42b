-- Look at the open round of a rounds session, and seal it for closing when it is due:
-- past its deadline with enough contributions, or sealed by a closer that has not
-- closed it within the grace (it died: another takes over).
--
-- KEYS[1]  the session's meta hash
-- ARGV[1]  the round's base (the t it steps from);  ARGV[2]  the grace in milliseconds
--
-- Replies {1, n, samples} sealed by this call: the caller closes the round with its n
-- contributions; {0, n, samples, first_ms, sealed_ms, now_ms} not for this caller to
-- close (0 for what is unset); {10, why} no round is open at that base because one was
-- dropped there (drop.lua); {3} the session is no longer at that base; {4} no such
-- session.
local meta = KEYS[1]
local t, rules = unpack(redis.call('HMGET', meta, 't', 'rounds'))
if not t then
  return {GONE}
end
if t ~= ARGV[1] then
  return {CONFLICT}
end
local round = prefix_of(meta) .. 'round'
local base, n, samples, first_ms, sealed =
  unpack(redis.call('HMGET', round, 'base', 'n', 'samples', 'first_ms', 'sealed_ms'))
local now = now_ms()
if base ~= t then
  local dropped = redis.call('GET', prefix_of(meta) .. 'dropped')
  if dropped and string.match(dropped, '^(%d+)') == t then
    return {DROPPED, string.match(dropped, '^%d+ (.*)$')}
  end
  return {0, 0, 0, 0, 0, now}
end
n, samples, first_ms = tonumber(n), tonumber(samples), tonumber(first_ms)
if sealed then
  if now - tonumber(sealed) >= tonumber(ARGV[2]) then
    redis.call('HSET', round, 'sealed_ms', now)
    return {1, n, samples}
  end
  return {0, n, samples, first_ms, tonumber(sealed), now}
end
local rule = cjson.decode(rules)
local timeout = rule['timeout_seconds']
if timeout and now >= first_ms + timeout * 1000 and n >= (rule['min_contributions'] or 1) then
  redis.call('HSET', round, 'sealed_ms', now)
  return {1, n, samples}
end
return {0, n, samples, first_ms, 0, now}
