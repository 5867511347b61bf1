"""Child processes started without forking the daemon.

uvloop starts a child with fork(): the daemon's page tables are copied in the event loop's thread,
about 12 ms for a daemon holding 200 MB, during which nothing else runs (bench/spawn.py).
``subprocess`` spawns with vfork (the child borrows the parent's memory until it execs), about 1 ms,
and here it runs in small dedicated threads, so the loop never waits for a spawn, and a waiter
thread per child collects its output and exit. ``run`` runs a child to its end; ``start`` starts a
long-running one (an NBD export daemon).

Always an argv list, never a shell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# spawning takes a millisecond: its own threads, never queued behind long jobs in the default executor
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="spawn")


@dataclass(frozen=True)
class Completed:
    """A child that ran to its end."""

    returncode: int
    stdout: bytes
    stderr: bytes  # empty when merged into stdout


def _wait_in_thread(proc: subprocess.Popen[bytes], stdin: bytes | None, loop: asyncio.AbstractEventLoop,
                    done: asyncio.Future[tuple[bytes, bytes]]) -> None:
    """Feed ``stdin``, collect ``proc``'s output and exit in a thread of its own, then hand them
    to the loop."""

    def settle(result: tuple[bytes, bytes] | None, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(result or (b"", b""))
        else:
            done.set_exception(exc)

    try:
        out, err = proc.communicate(stdin)
    except BaseException as exc:  # handed to the awaiting coroutine
        result: tuple[tuple[bytes, bytes] | None, BaseException | None] = (None, exc)
    else:
        result = ((out or b"", err or b""), None)
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (daemon stopped): nobody waits
        loop.call_soon_threadsafe(settle, *result)


async def run(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None,
              env: Mapping[str, str] | None = None, merge_stderr: bool = False) -> Completed:
    """Run ``argv`` to its end and return what it printed and its exit status (any status: the
    caller decides what a failure is).

    OSError when it cannot be started. After ``timeout`` seconds the child is killed and
    TimeoutError raised; a cancelled caller kills it too (and the cancellation propagates).
    """
    loop = asyncio.get_running_loop()
    spawn = functools.partial(
        subprocess.Popen, list(argv), stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env=None if env is None else dict(env))
    proc = await loop.run_in_executor(_SPAWNER, spawn)
    done: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
    threading.Thread(target=_wait_in_thread, args=(proc, stdin, loop, done), name="subprocess-wait",
                     daemon=True).start()
    try:
        out, err = await asyncio.wait_for(asyncio.shield(done), timeout)
    except (TimeoutError, asyncio.CancelledError):
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            await done  # the thread sees the killed process's pipes close
        raise
    assert proc.returncode is not None  # communicate() returned: the child was reaped
    return Completed(proc.returncode, out, err)


class Child:
    """A long-running child made by :func:`start`: a thread waits for its exit."""

    def __init__(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[int]) -> None:
        self._proc = proc
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has ended (and was reaped), else None."""
        return self._exited.result() if self._exited.done() and not self._exited.cancelled() else None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


def _reap_in_thread(proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop,
                    exited: asyncio.Future[int]) -> None:
    code = proc.wait()

    def settle() -> None:
        if not exited.done():
            exited.set_result(code)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (daemon stopped): nobody waits
        loop.call_soon_threadsafe(settle)


async def start(argv: Sequence[str], *, stderr: int | IO[bytes] = subprocess.DEVNULL,
                new_session: bool = False, cwd: Path | None = None) -> Child:
    """Start ``argv`` (stdin and stdout /dev/null, stderr as given, in ``cwd``) and return at once;
    OSError when it cannot be started. ``new_session``: its own session, so it outlives the daemon."""
    loop = asyncio.get_running_loop()
    spawn: functools.partial[subprocess.Popen[bytes]] = functools.partial(
        subprocess.Popen, list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        start_new_session=new_session, cwd=cwd)
    proc = await loop.run_in_executor(_SPAWNER, spawn)
    exited: asyncio.Future[int] = loop.create_future()
    threading.Thread(target=_reap_in_thread, args=(proc, loop, exited), name="subprocess-reap", daemon=True).start()
    return Child(proc, exited)
