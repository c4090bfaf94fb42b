-- Drop the open round of a rounds session whose mean step cannot be applied (it would
-- not be finite): its contributions go, a note says why (for its waiters, 10 minutes),
-- and the next round starts from the same t.
--
-- KEYS[1]  the session's meta hash
-- ARGV[1]  the round's base;  ARGV[2]  the contributions it holds;  ARGV[3]  why
--
-- Replies {1} dropped; {3} the session or the round moved on; {4} no such session.
local meta = KEYS[1]
local t = redis.call('HGET', meta, 't')
if not t then
  return {GONE}
end
local prefix = prefix_of(meta)
local base, held = unpack(redis.call('HMGET', prefix .. 'round', 'base', 'n'))
if t ~= ARGV[1] or base ~= t or held ~= ARGV[2] then
  return {CONFLICT}
end
discard_round(prefix, chunk_count(meta))
redis.call('SET', prefix .. 'dropped', t .. ' ' .. ARGV[3], 'PX', 600000)
publish_t(meta)
return {COMMITTED}
