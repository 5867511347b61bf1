"""Fault injection for crash-repair tests: `HVD_CRASH_AT=<step>` makes the daemon exit hard there.

It sits below every layer (compute, storage and net call it), so no import runs upwards.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def checkpoint(step: str) -> None:
    """Exit the process at once (no cleanup, like a power cut) when HVD_CRASH_AT names `step`."""
    if os.environ.get("HVD_CRASH_AT") == step:
        log.warning("HVD_CRASH_AT=%s: exiting hard", step)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(99)
