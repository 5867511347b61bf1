"""Every integer a client or a command can carry is bounded: an integer SQLite cannot store used to
be committed to the Raft log and then fail to apply on every replica and at every restart."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from hvd.api.app import build_router
from hvd.bounds import INT64_MAX, INT64_MIN, SAFE_INT_MAX, first_int_outside
from hvd.catalog import all_commands, commands  # noqa: F401 - all_commands registers the handlers


def unbounded_integers(schema: dict[str, Any], low: int, high: int) -> list[str]:
    """Paths of integer schemas in ``schema`` (with its $defs) without bounds inside [low, high]."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                lo = node.get("minimum", node.get("exclusiveMinimum"))
                hi = node.get("maximum", node.get("exclusiveMaximum"))
                if lo is None or hi is None or lo < low or hi > high:
                    found.append(path or "<root>")
            for key, sub in node.items():
                walk(sub, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "")
    return found


def _command_classes() -> list[type[BaseModel]]:
    return [cls for cls, _ in commands._REGISTRY.values()]


def _request_models() -> list[type[BaseModel]]:
    return sorted({r.body for r in build_router().routes if r.body is not None}, key=lambda m: m.__name__)


@pytest.mark.parametrize("cls", _command_classes(), ids=lambda c: c.__name__)
def test_every_command_integer_fits_sqlite(cls: type[BaseModel]) -> None:
    assert unbounded_integers(cls.model_json_schema(), INT64_MIN, INT64_MAX) == []


@pytest.mark.parametrize("model", _request_models(), ids=lambda m: m.__name__)
def test_every_api_integer_is_bounded_to_what_json_clients_represent(model: type[BaseModel]) -> None:
    assert unbounded_integers(model.model_json_schema(), -SAFE_INT_MAX, SAFE_INT_MAX) == []


def test_first_int_outside_names_the_path() -> None:
    assert first_int_outside({"a": [1, {"b": 2**64}]}, 0, 10) == "a[1].b"
    assert first_int_outside({"a": True, "b": [1.5e300, "9" * 30]}, 0, 1) is None
    assert first_int_outside(-1, 0, 1) == "body"
