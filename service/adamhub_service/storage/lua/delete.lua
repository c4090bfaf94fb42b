-- Delete a session if it is still at the expected rev.
--
-- KEYS[1]      the session's meta hash
-- KEYS[2 ..]   the chunks of its current version
-- ARGV[1]      expected rev
--
-- Replies {status} as in outcomes.WriteStatus: {1} deleted, {3} the rev moved on,
-- {4} no such session.
local COMMITTED, CONFLICT, GONE = 1, 3, 4
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then
  return {GONE}
end
if rev ~= ARGV[1] then
  return {CONFLICT}
end
for i = 1, #KEYS do
  redis.call('UNLINK', KEYS[i])
end
return {COMMITTED}
