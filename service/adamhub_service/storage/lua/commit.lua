-- Commit a new version of a session, all or nothing.
--
-- KEYS[1]            the session's meta hash
-- KEYS[2]            the idempotency record to check and write (KEYS[1] again when none)
-- KEYS[3]            the session's index of idempotency records (a sorted set by expiry)
-- KEYS[4 .. 3+n]     the new version's chunks, written just before with a TTL
-- KEYS[4+n .. #KEYS] the old version's chunks, to unlink
-- ARGV[1]  expected rev ("" = the session must not exist yet)
-- ARGV[2]  n, the number of new chunks
-- ARGV[3]  the idempotency record's value ("" = none)
-- ARGV[4]  the idempotency record's TTL in milliseconds
-- ARGV[5 ..] field, value pairs to set on the meta hash
--
-- Replies {status, value}, status as in outcomes.WriteStatus:
-- {1, new rev} committed; {2, record} the idempotency key is recorded already;
-- {3} the rev is not the expected one; {4} no such session; {5} a new session's id
-- is taken; {6} a new chunk has expired.
local COMMITTED, REPLAYED, CONFLICT, GONE, ID_TAKEN, EXPIRED = 1, 2, 3, 4, 5, 6
local meta = KEYS[1]
local n_new = tonumber(ARGV[2])
local first_new = 4

if ARGV[3] ~= '' then
  local record = redis.call('GET', KEYS[2])
  if record then
    return {REPLAYED, record}
  end
end

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

for i = first_new, first_new + n_new - 1 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return {EXPIRED}
  end
end
for i = first_new, first_new + n_new - 1 do
  redis.call('PERSIST', KEYS[i])
end
for i = first_new + n_new, #KEYS do
  redis.call('UNLINK', KEYS[i])
end

if #ARGV > 4 then
  redis.call('HSET', meta, unpack(ARGV, 5))
end
local new_rev = redis.call('HINCRBY', meta, 'rev', 1)
if ARGV[3] ~= '' then
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  -- Indexed by expiry, so that a delete finds every live record without a scan.
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + ttl, KEYS[2])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {COMMITTED, new_rev}
