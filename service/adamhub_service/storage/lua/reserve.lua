-- Reserve a place for a new session in its tenant's quota, and index it.
--
-- KEYS[1]  the tenant's index of session ids (a sorted set)
-- KEYS[2]  the tenant's session sizes (a hash)
-- ARGV[1]  session id, ARGV[2] its size, ARGV[3] max sessions, ARGV[4] max parameters
--
-- Replies {1} reserved (also when this id is reserved already: a retried create), or
-- {0, what, current}: 'sessions' or 'parameters' would go over the limit.
local index, sizes, id = KEYS[1], KEYS[2], ARGV[1]
if redis.call('ZSCORE', index, id) then
  return {1}
end
local count = redis.call('ZCARD', index)
if count + 1 > tonumber(ARGV[3]) then
  return {0, 'sessions', count}
end
local total = 0
for _, size in ipairs(redis.call('HVALS', sizes)) do
  total = total + tonumber(size)
end
if total + tonumber(ARGV[2]) > tonumber(ARGV[4]) then
  return {0, 'parameters', total}
end
redis.call('ZADD', index, 0, id)
redis.call('HSET', sizes, id, ARGV[2])
return {1}
