-- Make a snapshot current, and retire the snapshots and log it makes unneeded.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2 .. #KEYS]   the snapshot's chunks, written just before with a TTL
-- ARGV[1]  s, the step of the snapshot
-- ARGV[2]  the log entry of step s the snapshot was computed after
-- ARGV[3]  the snapshot's value ("<write id> <vectors> <optimizer json>")
--
-- The session stays at its rev (its state does not change). Kept: the newest snapshot
-- at or before t - history_steps (or the oldest one), every later one, and the log
-- after the oldest kept. Replies {1, log bytes since the newest snapshot}; {3} the
-- log no longer holds that entry at s (a rollback or reset came first) or a snapshot as
-- new exists; {4} no such session; {6} a chunk expired.
local meta = KEYS[1]
local s = tonumber(ARGV[1])
if redis.call('EXISTS', meta) == 0 then
  return {GONE}
end
migrate(meta)
local prefix = prefix_of(meta)
local log, snaps = prefix .. 'log', prefix .. 'snaps'
local snap_t = tonumber(redis.call('HGET', meta, 'snap_t'))
if s <= snap_t or redis.call('HGET', log, tostring(s)) ~= ARGV[2] then
  return {CONFLICT}
end
if not persist(2, #KEYS) then
  return {EXPIRED}
end
local write_id = snapshot_parts(ARGV[3])
redis.call('HSET', snaps, tostring(s), ARGV[3])
local retired = 0
for step = snap_t + 1, s do
  retired = retired + entry_bytes(redis.call('HGET', log, tostring(step)))
end
redis.call('HSET', meta, 'snap', write_id, 'snap_t', s)
local log_bytes = redis.call('HINCRBY', meta, 'log_bytes', -retired)

local t, history = unpack(redis.call('HMGET', meta, 't', 'history_steps'))
local keep_from = tonumber(t) - tonumber(history or '0')
local base = nil
local snapshot_steps = sorted_steps(snaps)
for _, step in ipairs(snapshot_steps) do
  if step <= keep_from then
    base = step
  end
end
if base then
  -- The log is contiguous from the oldest snapshot kept to t: retire it up to base,
  -- entry by entry (a few per snapshot), never by listing a long history.
  local count = chunk_count(meta)
  local oldest = snapshot_steps[1]
  for _, step in ipairs(snapshot_steps) do
    if step < base then
      local old_id, vectors = snapshot_parts(redis.call('HGET', snaps, tostring(step)))
      unlink_chunks(prefix, old_id, vectors, count)
      redis.call('HDEL', snaps, tostring(step))
    end
  end
  retire_log(prefix, oldest + 1, base, count)
end
return {COMMITTED, log_bytes}
