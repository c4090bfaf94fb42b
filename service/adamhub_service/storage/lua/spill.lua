-- Store a contribution its holder kept in memory, before its worker is told it is in
-- (202): from then on it survives the holder.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2 .. #KEYS]   the contribution's gradient chunks, written just before with a TTL
-- ARGV[1]  the round's base;  ARGV[2]  the holder's token;  ARGV[3]  its write id
--
-- Replies {1, n, samples} stored (or it was); {3} the round at that base no longer
-- holds it (it closed, was dropped, or the holder's lease lapsed and it was taken out);
-- {4} no such session; {6} a chunk expired.
local meta = KEYS[1]
local t = redis.call('HGET', meta, 't')
if not t then
  return {GONE}
end
local round = prefix_of(meta) .. 'round'
local base, n, samples, holder = unpack(redis.call('HMGET', round, 'base', 'n', 'samples', 'holder'))
if t ~= ARGV[1] or base ~= t then
  return {CONFLICT}
end
for j = 1, tonumber(n) do
  local entry = redis.call('HGET', round, tostring(j))
  if entry_write_id(entry) == ARGV[3] then
    if redis.call('HEXISTS', round, 'm' .. j) == 0 then
      return {COMMITTED, tonumber(n), tonumber(samples)}
    end
    if holder ~= ARGV[2] then
      return {CONFLICT}
    end
    if not persist(2, #KEYS) then
      return {EXPIRED}
    end
    redis.call('HDEL', round, 'm' .. j, 'k' .. j)
    if redis.call('HINCRBY', round, 'held', -1) == 0 then
      redis.call('HDEL', round, 'holder', 'lease_ms')
    end
    return {COMMITTED, tonumber(n), tonumber(samples)}
  end
end
return {CONFLICT}
