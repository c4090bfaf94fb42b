-- Change the size a session counts for in its tenant's parameter quota.
--
-- KEYS[1]  the tenant's session sizes (a hash)
-- ARGV[1]  session id, ARGV[2] its new size, ARGV[3] max parameters
--
-- Replies {1} done (also when it already has that size), or {0, 'parameters', current}:
-- the tenant would pass its limit.
local sizes, id, size = KEYS[1], ARGV[1], tonumber(ARGV[2])
local total = 0
local entries = redis.call('HGETALL', sizes)
for i = 1, #entries, 2 do
  if entries[i] ~= id then
    total = total + tonumber(entries[i + 1])
  end
end
if total + size > tonumber(ARGV[3]) then
  local mine = tonumber(redis.call('HGET', sizes, id) or '0')
  return {0, 'parameters', total + mine}
end
redis.call('HSET', sizes, id, size)
return {1}
