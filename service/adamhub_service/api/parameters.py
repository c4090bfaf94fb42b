"""Request parameters declared by several routes (their names in ``headers``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from adamhub_service.api import openapi
from adamhub_service.api.schemas import WIRE_DTYPES

DtypeHeader = Annotated[
    str | None,
    Header(
        description=openapi.DTYPE_PARAMETER_DESCRIPTION,
        json_schema_extra={"enum": list(WIRE_DTYPES)},
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        description=openapi.IDEMPOTENCY_KEY_DESCRIPTION,
        json_schema_extra={"pattern": openapi.IDEMPOTENCY_KEY_PATTERN},
    ),
]
