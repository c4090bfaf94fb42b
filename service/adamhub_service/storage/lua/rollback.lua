-- Return a session to the state right after step k, if what that needs is kept.
--
-- KEYS[1]  the session's meta hash
-- ARGV[1]  expected rev;  ARGV[2]  k
-- ARGV[3 ..] field, value pairs to set on the meta hash
--
-- Drops the log after k and the snapshots after k; the newest snapshot at or before k
-- becomes the current one. Replies {1, new rev}; {7, oldest k kept, t} when k is
-- not kept (or not reached); {3} the rev moved on; {4} no such session.
local meta = KEYS[1]
local k = tonumber(ARGV[2])
local refused = refusal(meta, ARGV[1])
if refused then
  return {refused}
end
migrate(meta)
local prefix = prefix_of(meta)
local log, snaps = prefix .. 'log', prefix .. 'snaps'
local t = tonumber(redis.call('HGET', meta, 't'))
local snapshot_steps = sorted_steps(snaps)
local oldest = snapshot_steps[1]
if k < oldest or k > t then
  return {NO_HISTORY, oldest, t}
end
local count = chunk_count(meta)
-- An open round's contributions were computed at a step that is no longer the last.
discard_round(prefix, count)
redis.call('ZREMRANGEBYSCORE', prefix .. 'hist', '(' .. k, '+inf')
local base = oldest
for _, step in ipairs(snapshot_steps) do
  if step > k then
    local old_id, vectors = snapshot_parts(redis.call('HGET', snaps, tostring(step)))
    unlink_chunks(prefix, old_id, vectors, count)
    redis.call('HDEL', snaps, tostring(step))
  else
    base = step
  end
end
-- The log is contiguous from the oldest snapshot to t: walk only the steps concerned.
retire_log(prefix, k + 1, t, count)
local log_bytes = 0
for step = base + 1, k do
  log_bytes = log_bytes + entry_bytes(redis.call('HGET', log, tostring(step)))
end
local base_id = snapshot_parts(redis.call('HGET', snaps, tostring(base)))
redis.call('HSET', meta, 't', k, 'snap', base_id, 'snap_t', base, 'log_bytes', log_bytes)
if #ARGV > 2 then
  redis.call('HSET', meta, unpack(ARGV, 3))
end
publish_t(meta)
return {COMMITTED, redis.call('HINCRBY', meta, 'rev', 1)}
