-- Shared by the session scripts (prepended to each when it is loaded).
--
-- A session's keys share the hash tag of its meta key, so a script given the meta key
-- may derive the others (they are in its slot):
--   <prefix>meta    the record, and the storage fields snap, snap_t, log_bytes
--   <prefix>log     a hash: step t -> "<write id> <dtype> <bytes>[ <optimizer json>]",
--                   the gradient of every step since the oldest snapshot kept
--   <prefix>snaps   a hash: step -> "<write id> <vectors> <optimizer json>", the
--                   snapshots of θ, m, v (and max v) kept, newest = meta's snap_t
--   <prefix>round   a hash, the open round of a rounds session: base (the t it steps
--                   from), n, samples, first_ms, sealed_ms (set once it takes no more),
--                   and 1 .. n -> "<write id> <dtype> <bytes> <samples> <loss or ->[ <optimizer json>]";
--                   contributions held in the memory of one process (the round's
--                   holder, whose worker waits) rather than stored: holder (its
--                   token), lease_ms (the end of its lease, store clock), held (how
--                   many), and for each such j: m<j> = 1, k<j> = its idempotency key
--   <prefix>dropped "<t> <why>": the round at t was dropped (its step not finite)
--   <prefix>hist    a sorted set: the history points of the newest steps, by t
--   <prefix>c:<write id>:<vector>:<i>   chunk i of a stored vector (g a gradient, s its
--                   scales when in 8-bit blocks; p m v x a snapshot's)
--   meta's spread = 1: the session's chunks are spread over a cluster, chunk i in the
--                   slot of {<id>:<i>} (storage/keyspace.py), beyond a script's reach:
--   <prefix>batches a sorted set: the batches of chunks being written, by start (ms)
--   <prefix>batch:<id>  a set: the chunk keys of one write, registered before it; its
--                   commit claims (deletes) it
--   <prefix>garbage a set: chunk keys retired, for the service to delete
local COMMITTED, REPLAYED, CONFLICT, GONE, ID_TAKEN, EXPIRED, NO_HISTORY = 1, 2, 3, 4, 5, 6, 7
local STALE, SEALED, DROPPED, ELSEWHERE = 8, 9, 10, 11

local function prefix_of(meta)
  return string.sub(meta, 1, #meta - 4)
end

local function chunk_count(meta)
  local size, per_chunk = unpack(redis.call('HMGET', meta, 'size', 'chunk_elements'))
  return math.ceil(tonumber(size) / tonumber(per_chunk))
end

-- Unlink the chunks of every vector named in `vectors` (one letter each) of a write;
-- a spread session's go to its garbage instead.
local function unlink_chunks(prefix, write_id, vectors, count)
  if redis.call('HGET', prefix .. 'meta', 'spread') == '1' then
    local id = string.match(prefix, '{(.*)}')
    for v = 1, #vectors do
      local name = ':' .. write_id .. ':' .. string.sub(vectors, v, v) .. ':'
      for i = 0, count - 1 do
        redis.call('SADD', prefix .. 'garbage', 'adamhub:{' .. id .. ':' .. i .. '}:c' .. name .. i)
      end
    end
    return
  end
  for v = 1, #vectors do
    local base = prefix .. 'c:' .. write_id .. ':' .. string.sub(vectors, v, v) .. ':'
    for i = 0, count - 1 do
      redis.call('UNLINK', base .. i)
    end
  end
end

local function entry_write_id(entry)
  return string.match(entry, '^(%S+)')
end

-- The stored vectors of a logged gradient: its values, and the scales of one in 8-bit
-- blocks (model/quantized.py).
local function entry_vectors(entry)
  if string.match(entry, '^%S+ (%S+)') == 'int8-block4096' then
    return 'gs'
  end
  return 'g'
end

-- Whether the log's entry of step t is the write `write_id` (so a state computed up to
-- it is of this history: a rollback or reset since would have written another).
local function entry_is(prefix, t, write_id)
  local entry = redis.call('HGET', prefix .. 'log', tostring(t))
  return entry ~= false and entry_write_id(entry) == write_id
end

local function entry_bytes(entry)
  return tonumber(string.match(entry, '^%S+ %S+ (%d+)'))
end

local function snapshot_parts(value)
  return string.match(value, '^(%S+) (%S+)')
end

-- Sessions stored before the log existed have one version, `head`, at step t: make it
-- the session's snapshot.
local function migrate(meta)
  if redis.call('HEXISTS', meta, 'snap') == 1 then
    return
  end
  local head, t, optimizer = unpack(redis.call('HMGET', meta, 'head', 't', 'optimizer'))
  local vectors = cjson.decode(optimizer)['amsgrad'] and 'pmvx' or 'pmv'
  redis.call('HSET', prefix_of(meta) .. 'snaps', t, head .. ' ' .. vectors .. ' ' .. optimizer)
  redis.call('HSET', meta, 'snap', head, 'snap_t', t, 'log_bytes', 0)
end

-- The status that refuses a write to a session not at `expected` rev, or nil.
local function refusal(meta, expected)
  local rev = redis.call('HGET', meta, 'rev')
  if not rev then
    return GONE
  end
  if rev ~= expected then
    return CONFLICT
  end
  return nil
end

-- Unlink the gradients of the log entries `first` to `last` (those present) and drop
-- the entries.
local function retire_log(prefix, first, last, count)
  local log = prefix .. 'log'
  for step = first, last do
    local entry = redis.call('HGET', log, tostring(step))
    if entry then
      unlink_chunks(prefix, entry_write_id(entry), entry_vectors(entry), count)
      redis.call('HDEL', log, tostring(step))
    end
  end
end

-- The store's clock in milliseconds.
local function now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

-- Drop a session's open round and unlink its contributions' gradients.
local function discard_round(prefix, count)
  local round = prefix .. 'round'
  local n = tonumber(redis.call('HGET', round, 'n') or '0')
  for i = 1, n do
    local entry = redis.call('HGET', round, tostring(i))
    if entry then
      unlink_chunks(prefix, entry_write_id(entry), entry_vectors(entry), count)
    end
  end
  redis.call('DEL', round)
end

-- Add step t's history point, keeping the newest `history_points` (default 10,000).
local function add_point(meta, t, point)
  local hist = prefix_of(meta) .. 'hist'
  local keep = tonumber(redis.call('HGET', meta, 'history_points') or '10000')
  redis.call('ZADD', hist, t, point)
  redis.call('ZREMRANGEBYRANK', hist, 0, -(keep + 1))
end

-- Unlink every snapshot, log entry, open round and history point of a session.
local function unlink_history(meta)
  local prefix = prefix_of(meta)
  local log, snaps = prefix .. 'log', prefix .. 'snaps'
  local count = chunk_count(meta)
  discard_round(prefix, count)
  redis.call('DEL', prefix .. 'hist')
  for _, value in ipairs(redis.call('HVALS', snaps)) do
    local old_id, vectors = snapshot_parts(value)
    unlink_chunks(prefix, old_id, vectors, count)
  end
  for _, entry in ipairs(redis.call('HVALS', log)) do
    unlink_chunks(prefix, entry_write_id(entry), entry_vectors(entry), count)
  end
  redis.call('DEL', log, snaps)
end

-- Every step of the log and of the snapshots, as sorted numbers.
local function sorted_steps(hash)
  local steps = {}
  for _, field in ipairs(redis.call('HKEYS', hash)) do
    steps[#steps + 1] = tonumber(field)
  end
  table.sort(steps)
  return steps
end

-- Check that the chunks written for a commit (with a TTL) are all there, and keep them;
-- for a spread session, KEYS[first] is the batch of its chunks: claim it (a sweep that
-- took it first, its write having outlived the TTL, deleted them).
local function persist(first, last)
  for i = first, last do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      return false
    end
  end
  for i = first, last do
    local batches = string.match(KEYS[i], '^(.*}:)batch:')
    if batches then
      redis.call('DEL', KEYS[i])
      redis.call('ZREM', batches .. 'batches', KEYS[i])
    else
      redis.call('PERSIST', KEYS[i])
    end
  end
  return true
end

-- Tell the waiters of a session (storage/notifier.py) its new t.
local function publish_t(meta)
  redis.call('PUBLISH', prefix_of(meta) .. 't', redis.call('HGET', meta, 't'))
end

-- Record idempotency keys with their TTL, indexed by expiry so a delete finds them.
local function record_idempotency(index, key, value, ttl)
  redis.call('SET', key, value, 'PX', ttl)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('ZADD', index, now + ttl, key)
  redis.call('PEXPIRE', index, ttl)
end

-- Take out of the open round the contributions held by a holder whose lease lapsed
-- (it died or stalled: its workers got no answer and retry), with their idempotency
-- records; the others keep their order. Tell the session's waiters. How many went.
local function purge_lapsed(meta, now)
  local round = prefix_of(meta) .. 'round'
  local n, held, lease = unpack(redis.call('HMGET', round, 'n', 'held', 'lease_ms'))
  if not held or tonumber(held) == 0 or tonumber(lease) > now then
    return 0
  end
  n = tonumber(n)
  local kept, samples = 0, 0
  for j = 1, n do
    local entry = redis.call('HGET', round, tostring(j))
    if redis.call('HEXISTS', round, 'm' .. j) == 1 then
      local key = redis.call('HGET', round, 'k' .. j)
      if key then
        redis.call('DEL', key)
      end
      redis.call('HDEL', round, 'm' .. j, 'k' .. j)
    else
      kept = kept + 1
      samples = samples + tonumber(string.match(entry, '^%S+ %S+ %S+ (%d+)'))
      if kept ~= j then
        redis.call('HSET', round, tostring(kept), entry)
      end
    end
  end
  if kept == 0 then
    redis.call('DEL', round)
  else
    for j = kept + 1, n do
      redis.call('HDEL', round, tostring(j))
    end
    redis.call('HSET', round, 'n', kept, 'samples', samples, 'held', 0)
    redis.call('HDEL', round, 'holder', 'lease_ms', 'sealed_ms')
  end
  publish_t(meta)
  return n - kept
end
