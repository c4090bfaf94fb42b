"""adamhub's server: Adam optimiser state in Redis, stepped over HTTP."""

__version__ = "0.1.0"
