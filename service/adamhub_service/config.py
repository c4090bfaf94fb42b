"""Configuration from ``ADAMHUB_*`` environment variables.

``Settings`` configure the app (every replica of a deployment shares them);
``ServerOptions`` configure the process that serves it (``adamhub-service serve``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    redis_cluster: bool = Field(
        default=False,
        description="The Redis URL names one node of a Redis Cluster; the others are found.",
    )
    spread_chunks: bool = Field(
        default=True,
        description="On a Redis Cluster, keep a session's chunks on every primary (chunk i "
        "in a slot of its own) rather than in the session's slot.",
    )
    chunk_elements: int = Field(
        default=262_144, ge=1, description="Elements per stored chunk of a vector."
    )
    max_size: int = Field(default=1 << 27, ge=1, description="Largest session size allowed.")
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
        default=1 << 30, ge=0, description="Bytes of session state cached in each process."
    )
    snapshot_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Bytes of logged gradients after which a session's state is snapshotted "
        "(default: 8 times one state vector's bytes, at least 64 KiB).",
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Socket timeout of every store command."
    )
    redis_max_connections: int = Field(default=64, ge=1)
    replica_acks: int = Field(
        default=0,
        ge=0,
        description="Replicas of the store that must confirm a write (WAIT) before it is "
        "acknowledged; when they do not in time, the answer is 503 outcome-unknown.",
    )
    replica_ack_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a write waits for its replicas' confirmation."
    )

    master_key: str | None = Field(
        default=None,
        min_length=16,
        description="When set, every /v1 request needs a key; when not, only loopback "
        "clients are served (protected mode).",
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host header values served (a port is ignored); None serves any. "
        "`serve` sets the loopback names when it binds to loopback.",
    )
    tenant_max_sessions: int = Field(default=1000, ge=0, description="Sessions per tenant.")
    tenant_max_parameters: int = Field(
        default=1 << 31, ge=0, description="Sum of the sizes of a tenant's sessions."
    )
    rate_limit: float = Field(
        default=0.0, ge=0, description="Requests per second per key (0: off)."
    )
    rate_limit_burst: int = Field(
        default=0, ge=0, description="Requests a key may send at once (0: one second's worth)."
    )
    max_json_bytes: int = Field(
        default=64 << 20, ge=1, description="Largest JSON body (vectors: use binary)."
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A body that stalls this long is answered 408."
    )
    max_inflight_bytes: int = Field(
        default=8 << 30,
        ge=1,
        description="Request and working memory a process takes on at once; 503 beyond.",
    )
    overload_wait_seconds: float = Field(
        default=30.0, ge=0, description="How long a request waits for memory before 503."
    )
    round_trip_bytes: int = Field(
        default=64 << 20, ge=1, description="Bytes of chunks written per store round trip."
    )
    max_wait_seconds: float = Field(
        default=300.0, ge=0, description="The longest a long-poll waits, whatever it asks."
    )
    janitor_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often a process deletes the sessions idle past their "
        "expires_after_idle_seconds.",
    )
    round_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a contribution waits for its round to close before 202 "
        "(a request's `Prefer: wait=N` asks for another, up to max_wait_seconds).",
    )


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
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or as JSON objects."
    )
    limit_concurrency: int = Field(
        default=4096, ge=1, description="Connections and tasks per process before 503."
    )
