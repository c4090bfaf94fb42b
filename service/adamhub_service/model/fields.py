"""Field types shared by the values that are validated: strict numbers, whole numbers
given as 3.0, and the refusal of explicit nulls for members that may only be left out."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict


def whole(value: Any) -> Any:
    """3.0 as 3: JSON Schema counts it as an integer; never 3.5 or "3"."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def refuse_nulls(values: Any, names: tuple[str, ...] | None = None) -> Any:
    """For a before-validator: the members given (of ``names``, or any) are not null;
    a member that may be left out has no null in the schema either."""
    if isinstance(values, dict):
        nulls = sorted(
            key for key, value in values.items() if value is None and (not names or key in names)
        )
        if nulls:
            raise ValueError(f"{', '.join(nulls)} may be left out but not null")
    return values


Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PositiveWhole = Annotated[int, Strict(), Field(ge=1), BeforeValidator(whole)]
NonNegativeWhole = Annotated[int, Strict(), Field(ge=0), BeforeValidator(whole)]
# Step counts: a trillion steps is beyond any run, and within what JSON stores exactly.
MAX_STEP = 10**12
StepCount = Annotated[int, Strict(), Field(ge=0, le=MAX_STEP), BeforeValidator(whole)]
