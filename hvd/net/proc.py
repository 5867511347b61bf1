"""Running the few external tools the network layer needs (nft, dnsmasq, sysctl).

Always an argv list, never a shell; namespaces are entered with `ip netns exec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hvd import spawn


class NetError(Exception):
    """A host network operation failed."""


class KernelFeatureMissing(NetError):
    """The running kernel lacks a feature the requested network needs."""


class CommandFailed(NetError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `netns` (unchanged when None: the caller's own namespace)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


TIMEOUT_S = 60.0  # nft, dnsmasq, sysctl, ip netns exec answer in milliseconds; a hung one must not hang a converge


async def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True,
              timeout: float = TIMEOUT_S) -> Result:
    """Run `argv` to completion without blocking the event loop (nor forking the daemon:
    hvd/spawn.py); killed (CommandFailed) after ``timeout`` seconds."""
    try:
        done = await spawn.run(argv, stdin=stdin.encode() if stdin is not None else None, timeout=timeout)
    except TimeoutError:
        raise CommandFailed(argv, -9, f"no answer within {timeout:.0f} s: killed") from None
    result = Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr)
    return result
