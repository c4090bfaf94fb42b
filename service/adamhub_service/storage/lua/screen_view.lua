-- What screening looks at, with the store's clock: one read, in the session's slot.
--
-- KEYS[1]  the session's screening hash (q:<worker> quarantines, r:<worker> refusals)
-- KEYS[2]  the session's accepted norms (a list, newest first)
-- ARGV[1]  how many of the newest norms to read (0: none)
--
-- Replies {screening hash as a flat list, norms, {seconds, microseconds}}.
local window = tonumber(ARGV[1])
local norms = {}
if window > 0 then
  norms = redis.call('LRANGE', KEYS[2], 0, window - 1)
end
return {redis.call('HGETALL', KEYS[1]), norms, redis.call('TIME')}
