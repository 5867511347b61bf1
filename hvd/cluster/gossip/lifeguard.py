"""Lifeguard's two local-health mechanisms (as HashiCorp memberlist implements them).

``Awareness``: a score that grows when this member misses its own deadlines (probes that get
neither an ack nor the nacks it expected, having to refute a suspicion, a stalled process) and
shrinks with every successful probe; timeouts are multiplied by ``score + 1``, so a sick member
slows down instead of accusing healthy ones.

``Suspicion``: a suspect member is declared dead after a timeout that starts at ``max`` and
falls towards ``min`` as independent members confirm the suspicion (each counted once).
"""

from __future__ import annotations

import math


def suspicion_min_timeout(suspicion_mult: float, members: int, probe_interval: float) -> float:
    """The shortest suspicion timeout: ``mult × max(1, log10(n)) × probe interval``."""
    return suspicion_mult * max(1.0, math.log10(max(1, members))) * probe_interval


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    """How many times each broadcast is sent: ``mult × ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(members + 1))


def remaining_suspicion(confirmations: int, wanted: int, elapsed: float, low: float, high: float) -> float:
    """Time left (may be negative) of a suspicion that has ``confirmations`` out of ``wanted``:
    the timeout falls from ``high`` to ``low`` with log(confirmations + 1) / log(wanted + 1)."""
    if wanted < 1:
        return low - elapsed
    frac = math.log(confirmations + 1.0) / math.log(wanted + 1.0)
    return max(low, high - frac * (high - low)) - elapsed


class Awareness:
    """The local health score, in ``[0, maximum - 1]``."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.maximum - 1, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)


class Suspicion:
    """The timer of one suspect member; ``deadline`` moves earlier with each new confirmation."""

    def __init__(self, accuser: str, wanted: int, low: float, high: float, now: float) -> None:
        self.wanted = wanted
        self.low = low
        self.high = high
        self.start = now
        self.confirmations = 0
        self._seen = {accuser}  # the first accuser's own suspicion gossiped back is no confirmation
        self.deadline = now + (high if wanted >= 1 else low)

    def confirm(self, accuser: str, now: float) -> bool:
        """Count ``accuser`` once; True if that was news (then re-gossip the suspicion)."""
        if self.confirmations >= self.wanted or accuser in self._seen:
            return False
        self._seen.add(accuser)
        self.confirmations += 1
        self.deadline = now + remaining_suspicion(self.confirmations, self.wanted, now - self.start,
                                                  self.low, self.high)
        return True
