"""Configuration from ``ADAMHUB_*`` environment variables.

``Settings`` configure the app (every replica of a deployment shares them);
``ServerOptions`` configure the process that serves it (``adamhub-service serve``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="ADAMHUB_", extra="ignore")


class Settings(BaseSettings):
    """Every knob of the app. Each field is also the variable ``ADAMHUB_<NAME>``."""

    model_config = _ENV

    redis_url: str | None = Field(
        default=None,
        description="Redis to keep state in; without it `serve` starts an embedded Valkey.",
    )
    chunk_elements: int = Field(
        default=262_144, ge=1, description="Elements per stored chunk of a vector."
    )
    max_size: int = Field(default=1 << 27, ge=1, description="Largest session size allowed.")
    max_body_bytes: int = Field(default=1 << 30, ge=1, description="Largest request body.")
    idempotency_ttl_seconds: float = Field(
        default=900.0, gt=0, description="How long an Idempotency-Key is remembered."
    )
    pending_write_ttl_seconds: float = Field(
        default=600.0, gt=0, description="Expiry of chunks written but not yet committed."
    )
    commit_attempts: int = Field(
        default=32, ge=1, description="Compare-and-set attempts of a write before 409."
    )
    cache_bytes: int = Field(
        default=256 << 20, ge=0, description="Bytes of session state cached in each process."
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Socket timeout of every store command."
    )
    redis_max_connections: int = Field(default=64, ge=1)


class ServerOptions(BaseSettings):
    """How ``adamhub-service serve`` runs the app: address, processes, embedded store, logs."""

    model_config = _ENV

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    data_dir: Path = Field(
        default=Path("adamhub-data"), description="The embedded Valkey's data folder."
    )
    log_level: str = "info"
