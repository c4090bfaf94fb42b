-- Delete a session if it is still at the expected rev.
--
-- KEYS[1]      the session's meta hash
-- KEYS[2 ..]   the chunks of its current version
-- ARGV[1]      expected rev
--
-- Returns 1 when deleted, 0 when the rev moved on, -1 when there is no session.
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then
  return -1
end
if rev ~= ARGV[1] then
  return 0
end
for i = 1, #KEYS do
  redis.call('UNLINK', KEYS[i])
end
return 1
