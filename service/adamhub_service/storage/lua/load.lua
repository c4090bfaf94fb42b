-- Read what a replica needs to rebuild a session's state: the record, the newest
-- snapshot's value, and the log entries after it, at one moment; or, for a replica
-- that holds an older state of the same history, the log entries after that state.
--
-- KEYS[1]  the session's meta hash
-- ARGV[1], ARGV[2]  (optional) a step s0 and the write id of its log entry, of a state
--                   the caller holds: when the log still holds that entry, and s0 <= t,
--                   the log after s0 is enough
--
-- Replies {} when there is no such session, else {meta as field, value pairs,
-- snapshot value, s, entry s+1, …, entry t}; the snapshot value is '' (and s is s0)
-- when the caller's state at s0 is the start.
local meta = KEYS[1]
local record = redis.call('HGETALL', meta)
if #record == 0 then
  return {}
end
local head, t, snap_t, optimizer =
  unpack(redis.call('HMGET', meta, 'head', 't', 'snap_t', 'optimizer'))
local prefix = prefix_of(meta)
local snapshot
local held = ARGV[1] and tonumber(ARGV[1])
if held and snap_t and held >= tonumber(snap_t) and held <= tonumber(t)
    and entry_is(prefix, held, ARGV[2]) then
  snapshot, snap_t = '', ARGV[1]
elseif snap_t then
  snapshot = redis.call('HGET', prefix .. 'snaps', snap_t)
else
  -- stored before the log existed: its one version is its snapshot (see migrate)
  snap_t = t
  local vectors = cjson.decode(optimizer)['amsgrad'] and 'pmvx' or 'pmv'
  snapshot = head .. ' ' .. vectors .. ' ' .. optimizer
end
local fields = {}
for step = tonumber(snap_t) + 1, tonumber(t) do
  fields[#fields + 1] = tostring(step)
end
local entries = {}
if #fields > 0 then
  entries = redis.call('HMGET', prefix .. 'log', unpack(fields))
end
return {record, snapshot, snap_t, entries}
