"""Request parameters declared by several routes (their names in ``headers``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from adamhub_service import errors
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

# The query parameters that may be given more than once (a list).
LIST_QUERY_PARAMETERS = frozenset({"tag"})


async def _single_valued_query(request: Request) -> None:
    """422 for a query parameter given twice that takes one value (FastAPI would take
    the last one silently)."""
    repeated = sorted(
        {key for key, _ in request.query_params.multi_items()}
        - LIST_QUERY_PARAMETERS
        - {key for key in request.query_params if len(request.query_params.getlist(key)) == 1}
    )
    if repeated:
        raise errors.ValidationFailed(
            f"query parameter {repeated[0]!r} takes one value, and was given more",
            errors=[{"loc": ["query", key], "msg": "given more than once"} for key in repeated],
        )


SingleValuedQuery = Depends(_single_valued_query)
