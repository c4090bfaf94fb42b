-- Delete a session if it is still at the expected rev: its record, snapshots, log and
-- idempotency records.
--
-- KEYS[1]  the session's meta hash
-- KEYS[2]  the session's index of idempotency records
-- ARGV[1]  expected rev
--
-- Replies {1} deleted, {3} the rev moved on, {4} no such session.
local meta = KEYS[1]
local rev = redis.call('HGET', meta, 'rev')
if not rev then
  return {GONE}
end
if rev ~= ARGV[1] then
  return {CONFLICT}
end
migrate(meta)
local prefix = prefix_of(meta)
local log, snaps = prefix .. 'log', prefix .. 'snaps'
local count = chunk_count(meta)
for _, value in ipairs(redis.call('HVALS', snaps)) do
  local old_id, vectors = snapshot_parts(value)
  unlink_chunks(prefix, old_id, vectors, count)
end
for _, entry in ipairs(redis.call('HVALS', log)) do
  unlink_chunks(prefix, entry_write_id(entry), 'g', count)
end
for _, record in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('UNLINK', record)
end
redis.call('UNLINK', meta, KEYS[2], log, snaps)
return {COMMITTED}
