-- Grow a session by param groups: its state, of the new size at its t, becomes its one
-- snapshot; the snapshots and log of the old size are retired (a rollback cannot go
-- back past the growth). The history points stay.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2 .. #KEYS]   the new snapshot's chunks, written just before with a TTL
-- ARGV[1]  expected rev
-- ARGV[2]  the new snapshot's value ("<write id> <vectors> <optimizer json>[ <steps>]")
-- ARGV[3 ..] field, value pairs to set on the meta hash (size, optimizer, head, …)
--
-- Replies {1, new rev} committed; {3} the rev moved on; {4} no such session; {6} a new
-- chunk has expired.
local meta = KEYS[1]
local status = refusal(meta, ARGV[1])
if status then
  return {status}
end
if not persist(2, #KEYS) then
  return {EXPIRED}
end
migrate(meta)
local prefix = prefix_of(meta)
local count = chunk_count(meta) -- of the old size: the chunks being retired
discard_round(prefix, count)
for _, value in ipairs(redis.call('HVALS', prefix .. 'snaps')) do
  local old_id, vectors = snapshot_parts(value)
  unlink_chunks(prefix, old_id, vectors, count)
end
for _, entry in ipairs(redis.call('HVALS', prefix .. 'log')) do
  unlink_chunks(prefix, entry_write_id(entry), entry_vectors(entry), count)
end
redis.call('DEL', prefix .. 'log', prefix .. 'snaps')
redis.call('HSET', meta, unpack(ARGV, 3))
local t = redis.call('HGET', meta, 't')
redis.call('HSET', prefix .. 'snaps', t, ARGV[2])
redis.call('HSET', meta, 'snap', snapshot_parts(ARGV[2]), 'snap_t', t, 'log_bytes', 0)
return {COMMITTED, redis.call('HINCRBY', meta, 'rev', 1)}
