-- Delete a session if it is still at the expected rev: its record, snapshots, log and
-- idempotency records.
--
-- KEYS[1]  the session's meta hash
-- KEYS[2]  the session's index of idempotency records
-- ARGV[1]  expected rev
--
-- Replies {1} deleted, {3} the rev moved on, {4} no such session.
local meta = KEYS[1]
local refused = refusal(meta, ARGV[1])
if refused then
  return {refused}
end
migrate(meta)
unlink_history(meta)
for _, record in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('UNLINK', record)
end
local prefix = prefix_of(meta)
redis.call('UNLINK', meta, KEYS[2], prefix .. 'screen', prefix .. 'norms', prefix .. 'refusals')
return {COMMITTED}
