-- Delete a session if it is still at the expected rev, with its idempotency records.
--
-- KEYS[1]      the session's meta hash
-- KEYS[2]      the session's index of idempotency records
-- KEYS[3 ..]   the chunks of its current version
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
-- The records share the session's hash tag, so they are in this script's slot.
for _, record in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('UNLINK', record)
end
for i = 1, #KEYS do
  redis.call('UNLINK', KEYS[i])
end
return {COMMITTED}
