"""Log lines `time level module [req-<uuid> user project] message`.

The request id, user and project travel in context variables, set by the API's request-id
middleware, so every log line of a request (and of the peer calls it makes) carries them.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
user_var: ContextVar[str] = ContextVar("user", default="-")
project_var: ContextVar[str] = ContextVar("project", default="-")


class ContextFilter(logging.Filter):
    """Copies the request context into each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.user = user_var.get()
        record.project = project_var.get()
        return True


class HvdFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps; typeshed types it as a method

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s [%(request_id)s %(user)s %(project)s] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )


def setup_logging(level: str = "INFO", file: str = "") -> None:
    """Install one handler on the root logger (idempotent)."""
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(HvdFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log duplicates our own request line
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
