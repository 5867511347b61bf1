"""Bounded integer types shared by the API models and the catalog commands, and a check for
integers nested in free-form JSON.

SQLite stores signed 64-bit integers. An unbounded integer in a request used to be committed to the
Raft log and then fail to apply on every replica and at every restart. The API accepts integers a
JSON client can represent exactly (|n| < 2^53) — fields with a meaning add tighter bounds with
``Field`` — and the commands refuse anything SQLite cannot store, as a second line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field

SAFE_INT_MAX = 2**53 - 1  # the largest integer every JSON client represents exactly
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

SafeInt = Annotated[int, Field(ge=-SAFE_INT_MAX, le=SAFE_INT_MAX)]
"""Any integer the public API accepts."""

QuotaLimit = Annotated[int, Field(ge=-1, le=SAFE_INT_MAX, description="A limit; -1 = unlimited.")]

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""Any integer a catalog command carries: what SQLite can store."""


def first_int_outside(value: Any, low: int, high: int, path: str = "") -> str | None:
    """The path (``a.b[2]``) of the first integer in ``value`` outside [low, high], or None.

    Walks what JSON decodes to (dicts, lists, tuples) and pydantic models; booleans are not
    integers here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if low <= value <= high else (path or "body")
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = first_int_outside(item, low, high, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = first_int_outside(item, low, high, f"{path}[{i}]")
            if found is not None:
                return found
    return None
