"""The only code that talks to Redis: keys, encoding, Lua scripts, the store, the cache."""
