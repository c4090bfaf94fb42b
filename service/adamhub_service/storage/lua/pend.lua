-- Register the chunks a write of a spread session is about to write, before it writes
-- them: a write that never commits leaves them to a sweep (sweep.lua) past the TTL.
--
-- KEYS[1]  the session's batches (a sorted set);  KEYS[2]  this write's batch
-- ARGV     the chunk keys
--
-- Replies the store's clock (ms).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('SADD', KEYS[2], unpack(ARGV))
redis.call('ZADD', KEYS[1], now, KEYS[2])
return now
