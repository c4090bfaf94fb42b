-- Create a session, start it over from a new snapshot at step 0, or change its record.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2 .. #KEYS]   a new snapshot's chunks, written just before with a TTL
-- ARGV[1]  expected rev ("" = the session must not exist yet)
-- ARGV[2]  the new snapshot's value ("<write id> <vectors> <optimizer json>"), or ""
--          for a change of the record alone
-- ARGV[3 ..] field, value pairs to set on the meta hash
--
-- A new snapshot replaces every snapshot and log entry: it is the state at the
-- session's t (0 for a new session or a reset; an imported checkpoint's t).
-- Replies {1, new rev} committed; {3} the rev is not the expected one; {4} no such
-- session; {5} a new session's id is taken; {6} a new chunk has expired.
local meta = KEYS[1]
local rev = redis.call('HGET', meta, 'rev')
if ARGV[1] == '' then
  if rev then
    return {ID_TAKEN}
  end
elseif not rev then
  return {GONE}
elseif rev ~= ARGV[1] then
  return {CONFLICT}
end
if not persist(2, #KEYS) then
  return {EXPIRED}
end
if #ARGV > 2 then
  redis.call('HSET', meta, unpack(ARGV, 3))
end
if ARGV[2] ~= '' then
  if rev then
    migrate(meta)
    unlink_history(meta)
  end
  local t = redis.call('HGET', meta, 't')
  redis.call('HSET', prefix_of(meta) .. 'snaps', t, ARGV[2])
  redis.call('HSET', meta, 'snap', snapshot_parts(ARGV[2]), 'snap_t', t, 'log_bytes', 0)
end
return {COMMITTED, redis.call('HINCRBY', meta, 'rev', 1)}
