"""Authentication of peer requests: HMAC-SHA256 with the cluster key, a time window and replay cache.

A peer signs ``method, path, node, timestamp, nonce, sha256(body)``; the receiver accepts a request
only if the signature matches, the timestamp is within ``WINDOW_S`` of its own clock and the
signature was not seen before. The nonce makes two identical messages (e.g. heartbeats) sent in
the same instant distinct, so replay detection never eats a legitimate request.

A long-lived stream (the Raft message stream) is opened by one such signed request; each frame
on it then carries ``HMAC(key, nonce, frame number, payload)``. The signed nonce ties the frames
to that one stream and the frame number to their order, so a frame can be neither forged nor
replayed, reordered or moved to another stream.

Which key signs and which keys verify follows the cluster's protocol level during a rolling
upgrade from hvd 0.1.0 (hvd/cluster/keys.py): a verifier may accept two keys, tried in order.
A stream opened with a key the verifier no longer accepts (as of the last request it verified) is
closed at its next frame.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping

from hvd.cluster.keys import KeySource, key_source

WINDOW_S = 30.0
NODE_HEADER = "X-Hvd-Node"
TIMESTAMP_HEADER = "X-Hvd-Timestamp"
NONCE_HEADER = "X-Hvd-Nonce"
SIGNATURE_HEADER = "X-Hvd-Signature"


class PeerAuthError(Exception):
    """The request is unsigned, forged, stale or replayed (the message says which)."""


def _mac(key: bytes, method: str, path: str, node: str, timestamp: str, nonce: str, body: bytes) -> str:
    material = "\n".join((method.upper(), path, node, timestamp, nonce, hashlib.sha256(body).hexdigest()))
    return hmac.new(key, material.encode(), hashlib.sha256).hexdigest()


def sign_headers(
    key: bytes, node: str, method: str, path: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate one request from ``node`` (path without the query string)."""
    timestamp = f"{time.time() if now is None else now:.6f}"
    nonce = secrets.token_hex(12)
    return {
        NODE_HEADER: node,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _mac(key, method, path, node, timestamp, nonce, body),
    }


FRAME_MAC_BYTES = 32


class FrameSealer:
    """Prefixes each outgoing frame of one stream with its MAC (the sender's side)."""

    def __init__(self, key: bytes, nonce: str) -> None:
        self.key = key
        self._base = hmac.new(key, b"hvd-stream\n" + nonce.encode() + b"\n", hashlib.sha256)
        self.seq = 0

    def mac(self, seq: int, payload: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(seq.to_bytes(8, "big"))
        mac.update(payload)
        return mac.digest()

    def seal(self, payload: bytes) -> bytes:
        self.seq += 1
        return self.mac(self.seq - 1, payload) + payload


class FrameOpener:
    """Checks and strips the MAC of each incoming frame, in order (the receiver's side)."""

    def __init__(self, key: bytes, nonce: str, still_accepted: Callable[[], bool] = lambda: True) -> None:
        """``still_accepted()``: whether the stream's key is still accepted (false once the legacy
        key is retired after an upgrade: the sender reconnects with the derived key)."""
        self._macs = FrameSealer(key, nonce)
        self._still_accepted = still_accepted

    def open(self, frame: bytes) -> bytes:
        """The payload of the next frame; raises PeerAuthError if it is forged, replayed or out of
        order, or if the stream's key is no longer accepted."""
        if not self._still_accepted():
            raise PeerAuthError("peer stream signed with a key no longer accepted (the cluster finished its upgrade)")
        payload = frame[FRAME_MAC_BYTES:]
        if not hmac.compare_digest(self._macs.mac(self._macs.seq, payload), frame[:FRAME_MAC_BYTES]):
            raise PeerAuthError("bad frame signature on peer stream")
        self._macs.seq += 1
        return payload


class PeerVerifier:
    """Checks signed peer requests; remembers recent signatures to reject replays.

    Memory is bounded by ``max_entries``: when the cache is full the oldest signature is forgotten
    and its timestamp becomes a floor below which every request is refused, so a forgotten
    signature can still never be replayed (at worst a very late legitimate message is dropped,
    which peers tolerate).
    """

    def __init__(self, key: bytes | KeySource, window_s: float = WINDOW_S, max_entries: int = 100_000) -> None:
        """``key``: one key, or a KeySource whose ``accepted()`` keys are tried in order."""
        self._keys = key_source(key)
        # the accepted keys as of the last request verified (on the event loop): what stream frames,
        # some opened in worker threads, check against without asking the protocol gate from there
        self._accepted = self._keys.accepted()
        self._window = window_s
        self._max = max_entries
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()
        self._floor = float("-inf")

    def precheck(self, headers: Mapping[str, str], now: float | None = None) -> None:
        """What can be checked before reading the body (headers, time window, replay): a request
        that fails here is refused without buffering its body. Raises PeerAuthError."""
        now = time.time() if now is None else now
        try:
            sent = float(headers[TIMESTAMP_HEADER])
            signature = headers[SIGNATURE_HEADER]
        except (KeyError, ValueError) as exc:
            raise PeerAuthError("missing or malformed peer signature headers") from exc
        if NODE_HEADER not in headers or NONCE_HEADER not in headers:
            raise PeerAuthError("missing or malformed peer signature headers")
        if not abs(now - sent) <= self._window:  # also refuses NaN
            raise PeerAuthError(f"peer request timestamp outside the ±{self._window:.0f} s window")
        if signature in self._seen or sent <= self._floor:
            raise PeerAuthError("replayed peer request")

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: float | None = None) -> str:
        """Return the sending node's id, or raise PeerAuthError."""
        return self._verify(method, path, headers, body, now)[0]

    def _verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
                now: float | None) -> tuple[str, bytes]:
        """(the sending node's id, the key its signature was made with), or raise PeerAuthError."""
        now = time.time() if now is None else now
        try:
            node, timestamp = headers[NODE_HEADER], headers[TIMESTAMP_HEADER]
            nonce, signature = headers[NONCE_HEADER], headers[SIGNATURE_HEADER]
            sent = float(timestamp)
        except (KeyError, ValueError) as exc:
            raise PeerAuthError("missing or malformed peer signature headers") from exc
        self._accepted = self._keys.accepted()
        key = next((k for k in self._accepted
                    if hmac.compare_digest(_mac(k, method, path, node, timestamp, nonce, body), signature)), None)
        if key is None:
            raise PeerAuthError("bad peer signature")
        if not abs(now - sent) <= self._window:  # also refuses NaN
            raise PeerAuthError(f"peer request timestamp outside the ±{self._window:.0f} s window")
        self._expire(now)
        if signature in self._seen or sent <= self._floor:
            raise PeerAuthError("replayed peer request")
        self._seen.add(signature)
        self._order.append((sent, signature))
        if len(self._order) > self._max:
            old_ts, old_sig = self._order.popleft()
            self._seen.discard(old_sig)
            self._floor = max(self._floor, old_ts)
        return node, key

    def open_stream(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[str, FrameOpener]:
        """Verify the signed request that opens a stream: (sending node, opener for its frames)."""
        node, key = self._verify(method, path, headers, b"", None)
        return node, FrameOpener(key, headers[NONCE_HEADER], lambda: key in self._accepted)

    def _expire(self, now: float) -> None:
        # entries older than the window can go: their timestamps would be refused anyway
        while self._order and self._order[0][0] < now - self._window:
            self._seen.discard(self._order.popleft()[1])
