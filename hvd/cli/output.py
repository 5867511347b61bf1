"""How the CLI prints results: a rich table (default), JSON, or bare values (`-f value`), with
`-c COLUMN` picking columns — like the openstack client's formatters."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from hvd.cli.http import CliError

FORMATS = ("table", "json", "value")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-f", "--format", choices=FORMATS, default="table", help="output format (default: table)")
    group.add_argument("-c", "--column", action="append", default=[], metavar="COLUMN",
                       help="show this column (repeat for several)")


def cell(value: Any) -> str:
    """One value as text: nested data as compact JSON, lists of plain values comma-separated."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _pick(available: Sequence[str], wanted: Sequence[str]) -> list[str]:
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise CliError(f"unknown column {', '.join(map(repr, unknown))}; choose from {', '.join(available)}")
    return list(wanted)


def _console(out: TextIO) -> Console:
    # a pipe gets the table's natural width instead of a wrapped 80-column one
    return Console(file=out, width=None if out.isatty() else 400, highlight=False, soft_wrap=False)


def print_list(rows: list[dict[str, Any]], default_columns: Sequence[str], args: argparse.Namespace,
               out: TextIO | None = None) -> None:
    """Rows of a collection, with the default columns unless `-c` picks others."""
    out = out or sys.stdout
    available = sorted({k for r in rows for k in r} | set(default_columns))
    columns = _pick(available, args.column) if args.column else list(default_columns)
    if args.format == "json":
        out.write(json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2) + "\n")
    elif args.format == "value":
        for r in rows:
            out.write(" ".join(cell(r.get(c)) for c in columns) + "\n")
    else:
        table = Table(*columns, show_lines=False)
        for r in rows:
            table.add_row(*(cell(r.get(c)) for c in columns))
        _console(out).print(table)


def print_one(item: dict[str, Any], args: argparse.Namespace, out: TextIO | None = None) -> None:
    """One resource as Field/Value pairs (all fields unless `-c` picks some)."""
    out = out or sys.stdout
    columns = _pick(list(item), args.column) if args.column else list(item)
    if args.format == "json":
        out.write(json.dumps({c: item.get(c) for c in columns}, indent=2) + "\n")
    elif args.format == "value":
        for c in columns:
            out.write(cell(item.get(c)) + "\n")
    else:
        table = Table("Field", "Value")
        for c in columns:
            table.add_row(c, cell(item.get(c)))
        _console(out).print(table)
