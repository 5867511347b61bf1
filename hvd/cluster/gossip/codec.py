"""Gossip packets on the wire: JSON sealed with AES-GCM under a key derived from the cluster key.

A packet is ``version (1 byte) | nonce (12) | AES-GCM(JSON {"f": sender, "ts": wall time, "m": [messages]})``
with the version byte as associated data. The receiver refuses a packet it cannot open (forged, or
sealed under another cluster key), one whose timestamp is outside ``± window_s`` of its own clock
(stale), and one whose nonce it has already seen inside the window (replayed). Refusals are counted
by reason, never logged one by one: a flood must not become a log flood.
"""

from __future__ import annotations

import json
import os
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = len(VERSION) + NONCE_BYTES + TAG_BYTES
WINDOW_S = 30.0  # the clock skew tolerated between hosts; NTP keeps them far closer


class Refused(Exception):
    """A packet was refused; ``reason`` is one of malformed, forged, stale, replayed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_key(cluster_key: bytes) -> bytes:
    """The packet key: HKDF-SHA256 of the cluster key, bound to this use (never the raw key)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"hvd-gossip-v1", info=b"hvd gossip packets").derive(
        cluster_key
    )


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class PacketCodec:
    """Seals outgoing and opens incoming packets; keeps the replay cache and refusal counters.

    Memory is bounded by ``max_seen``: when full, the oldest nonce is forgotten and its timestamp
    becomes a floor below which packets are refused, so a forgotten nonce can never be replayed.
    """

    def __init__(self, cluster_key: bytes, window_s: float = WINDOW_S, max_seen: int = 200_000,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._aead = AESGCM(derive_key(cluster_key))
        self._window = window_s
        self._max_seen = max_seen
        self._random = random_bytes
        self._seen: set[bytes] = set()
        self._order: deque[tuple[float, bytes]] = deque()
        self._floor = float("-inf")
        self.refused: Counter[str] = Counter()

    def seal(self, sender: str, messages: list[dict[str, Any]], now: float) -> bytes:
        """One packet from ``sender`` carrying ``messages``, stamped with wall time ``now``."""
        nonce = self._random(NONCE_BYTES)
        plain = dumps({"f": sender, "ts": now, "m": messages})
        return VERSION + nonce + self._aead.encrypt(nonce, plain, VERSION)

    def open(self, packet: bytes, now: float) -> tuple[str, list[dict[str, Any]]]:
        """(sender, messages) of a packet, or Refused (counted in ``refused``)."""
        try:
            return self._open(packet, now)
        except Refused as exc:
            self.refused[exc.reason] += 1
            raise

    def _open(self, packet: bytes, now: float) -> tuple[str, list[dict[str, Any]]]:
        if len(packet) < OVERHEAD or packet[:1] != VERSION:
            raise Refused("malformed")
        nonce = packet[1:1 + NONCE_BYTES]
        try:
            plain = self._aead.decrypt(nonce, packet[1 + NONCE_BYTES:], VERSION)
        except InvalidTag:
            raise Refused("forged") from None
        try:
            body = json.loads(plain)
            sender, sent, messages = body["f"], float(body["ts"]), body["m"]
        except (ValueError, KeyError, TypeError):
            raise Refused("malformed") from None
        if not isinstance(sender, str) or not isinstance(messages, list):
            raise Refused("malformed")
        if abs(now - sent) > self._window:
            raise Refused("stale")
        self._expire(now)
        if nonce in self._seen or sent <= self._floor:
            raise Refused("replayed")
        self._seen.add(nonce)
        self._order.append((sent, nonce))
        if len(self._order) > self._max_seen:
            old_sent, old_nonce = self._order.popleft()
            self._seen.discard(old_nonce)
            self._floor = max(self._floor, old_sent)
        return sender, [m for m in messages if isinstance(m, dict)]

    def _expire(self, now: float) -> None:
        # nonces older than the window can go: their packets would be refused as stale anyway
        while self._order and self._order[0][0] < now - self._window:
            self._seen.discard(self._order.popleft()[1])
