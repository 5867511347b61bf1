"""Failed-login throttling (pure: the clock is passed in).

Failures are counted per key in a sliding window; a key with `max_failures` failures inside
`window_s` is refused until its oldest failure leaves the window. The login path uses two
keys, the source address and the user name, so neither one address guessing many passwords
nor many addresses guessing one user's password get more than a few tries a minute. A
successful login clears the user's count (not the source's). Memory is bounded: past
`max_keys` keys the least recently failed ones are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import ClassVar

from hvd.errors import HvdError


class TooManyRequests(HvdError):
    """429; `retry_after` (whole seconds) goes into the Retry-After header."""

    status: ClassVar[int] = 429
    title: ClassVar[str] = "Too Many Requests"
    retryable: ClassVar[bool] = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=max(1, int(retry_after + 0.999)))

    @property
    def retry_after(self) -> int:
        return int(self.details["retry_after"])


class FailureThrottle:
    def __init__(self, limits: dict[str, tuple[int, float]], clock: Callable[[], float],
                 max_keys: int = 100_000) -> None:
        """`limits`: key kind ("source", "user") -> (max failures, window in seconds)."""
        self.limits = limits
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        window = self.limits[key[0]][1]
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, keys: Iterable[tuple[str, str]]) -> float:
        """Seconds until every key may try again (0: allowed now)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            limit, window = self.limits[key[0]]
            if len(times) >= limit:
                wait = max(wait, times[len(times) - limit] + window - now)
        return wait

    def failed(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self.clock()
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
