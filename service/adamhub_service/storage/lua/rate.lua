-- Take one token from a key's bucket (refilled at ARGV[1] per second, up to ARGV[2]).
--
-- KEYS[1]  the bucket: a hash of tokens and the time they were counted
-- Replies {allowed (1 or 0), tokens left (string), seconds until the next token (string)}.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]) or burst, tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
end
return {allowed, tostring(tokens), tostring(wait)}
