-- Read what a replica needs to rebuild a session's state: the record, the newest
-- snapshot's value, and the log entries after it, at one moment.
--
-- KEYS[1]  the session's meta hash
--
-- Replies {} when there is no such session, else {meta as field, value pairs,
-- snapshot value, entry s+1, …, entry t}.
local meta = KEYS[1]
local record = redis.call('HGETALL', meta)
if #record == 0 then
  return {}
end
local head, t, snap_t, optimizer =
  unpack(redis.call('HMGET', meta, 'head', 't', 'snap_t', 'optimizer'))
local prefix = prefix_of(meta)
local snapshot
if snap_t then
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
