-- What a spread session's chunks leave to delete: the batches of writes that never
-- committed within the TTL go to the garbage (a commit can no longer claim them), and
-- up to a number of the garbage's chunk keys are answered; the service unlinks those,
-- then removes them from the garbage (SREM).
--
-- KEYS[1]  the session's meta hash
-- ARGV[1]  the TTL of a batch, ms;  ARGV[2]  how many chunk keys to answer at most
--
-- Replies {whether the session or a batch of it still exists (1/0), chunk keys}.
local prefix = prefix_of(KEYS[1])
local batches, garbage = prefix .. 'batches', prefix .. 'garbage'
for _, batch in ipairs(redis.call('ZRANGEBYSCORE', batches, '-inf', now_ms() - tonumber(ARGV[1]))) do
  for _, key in ipairs(redis.call('SMEMBERS', batch)) do
    redis.call('SADD', garbage, key)
  end
  redis.call('DEL', batch)
  redis.call('ZREM', batches, batch)
end
local live = redis.call('EXISTS', KEYS[1]) + redis.call('ZCARD', batches)
return {live > 0 and 1 or 0, redis.call('SRANDMEMBER', garbage, tonumber(ARGV[2]))}
