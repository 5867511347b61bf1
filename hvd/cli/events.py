"""`hvd events`: the API's server-sent event stream (/v1/events), one line per event.

Without `--follow` it prints the first event that matches and exits (a script can wait for
something to happen); with it, every matching event until Ctrl-C. `--type` takes shell patterns
(`instance.*`). Events carry `type`, `time`, `host` and fields of their kind."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from hvd.cli.commands import Action, Registry
from hvd.cli.http import CliError, Session
from hvd.cli.output import cell

READ_TIMEOUT_S = 60.0  # the API sends a keepalive every 15 s, so silence this long means a dead link


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events of a text/event-stream: `data:` lines joined until a blank line; comments skipped."""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield json.loads("\n".join(data))


def matches(event: dict[str, Any], patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(str(event.get("type", "")), p) for p in patterns)


def event_line(event: dict[str, Any], fmt: str, columns: Sequence[str]) -> str:
    """One event as one line: `TIME TYPE key=value ...` (table), JSON, or bare values."""
    if columns:
        event = {c: event.get(c) for c in columns}
    if fmt == "json":
        return json.dumps(event, sort_keys=False, default=str)
    if fmt == "value":
        return " ".join(cell(v) for v in event.values())
    when = event.get("time")
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") \
        if isinstance(when, int | float) else cell(when)
    rest = " ".join(f"{k}={cell(v)}" for k, v in event.items() if k not in ("time", "type"))
    return " ".join(p for p in (stamp if "time" in event else "", cell(event.get("type")) if "type" in event else "",
                                rest) if p)


def follow(session: Session, args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    deadline = time.monotonic() + args.timeout if args.timeout else None
    read_timeout = min(args.timeout, READ_TIMEOUT_S) if args.timeout else READ_TIMEOUT_S
    resp = session.open("/v1/events", timeout=read_timeout)
    print(f"hvd: following {session.url}/v1/events (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    try:
        for event in parse_sse(_lines(resp, deadline)):
            if matches(event, args.type):
                out.write(event_line(event, args.format, args.column) + "\n")
                out.flush()
                seen += 1
                if not args.follow:
                    return
    finally:
        resp.close()
    if not args.follow and not seen:
        raise CliError(f"no matching event within {args.timeout:g} s")


def _lines(resp: Any, deadline: float | None) -> Iterator[str]:
    while deadline is None or time.monotonic() < deadline:
        try:
            raw = resp.readline()
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                return
            raise CliError(f"the event stream was silent for {READ_TIMEOUT_S:.0f} s (no keepalive)") from None
        if not raw:
            raise CliError("the API closed the event stream (token revoked or expired?)")
        yield raw.decode(errors="replace")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--follow", action="store_true", help="print every event until Ctrl-C (default: the first)")
    parser.add_argument("--type", action="append", default=[], metavar="PATTERN",
                        help="only events whose type matches, e.g. instance.* (repeat)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop waiting after this long")
    parser.add_argument("-f", "--format", choices=("table", "json", "value"), default="table",
                        help="table: one 'TIME TYPE key=value...' line per event; json: JSON lines")
    parser.add_argument("-c", "--column", action="append", default=[], metavar="FIELD",
                        help="print only this field (repeat)")


def register_events(registry: Registry) -> None:
    registry.register_command(Action("events", "print the API's events (server-sent), one line each", follow,
                                     output=False, configure=_configure, operations=("GET /v1/events",)))
