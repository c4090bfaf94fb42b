-- Count a worker's refused gradient in a session's screening record, and quarantine the
-- worker when it is refused `quarantine_after` times in a row.
--
-- KEYS[1]  the session's screening hash (r:<worker> refusals in a row, q:<worker> ends)
-- KEYS[2]  the session's refusals (a sorted set by time, ms)
-- ARGV[1]  worker, ARGV[2] quarantine_after, ARGV[3] quarantine ms, ARGV[4] the refusal
--          (JSON without its time), ARGV[5] refusals kept
--
-- Replies {ends ms (0: not quarantined), now ms}.
local screen, refusals, worker = KEYS[1], KEYS[2], ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local count = redis.call('HINCRBY', screen, 'r:' .. worker, 1)
local ends = 0
if count >= tonumber(ARGV[2]) then
  ends = now + tonumber(ARGV[3])
  redis.call('HSET', screen, 'q:' .. worker, ends)
  redis.call('HDEL', screen, 'r:' .. worker)
end
local event = cjson.decode(ARGV[4])
event['time'] = now / 1000
event['quarantined_until'] = ends > 0 and ends / 1000 or cjson.null
redis.call('ZADD', refusals, now, cjson.encode(event))
redis.call('ZREMRANGEBYRANK', refusals, 0, -(tonumber(ARGV[5]) + 1))
return {ends, now}
