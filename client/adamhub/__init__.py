"""adamhub: the Python SDK of the Adam-as-a-service HTTP API."""

__version__ = "0.1.0"
