"""Keys derived from the human-chosen cluster key (HKDF-SHA256, one info label per use).

The cluster key is text an operator typed: it is never used as a key itself. Each use gets its own
32-byte key, so a key recovered from one use (say, a leaked join-token MAC) says nothing about
another (the peer-request HMAC). Every host derives the same keys from the same cluster key.
Gossip packets derive theirs in ``gossip/codec.py`` (salt ``hvd-gossip-v1``; hvd 0.1.0 already did).

**Rolling upgrade from hvd 0.1.0.** 0.1.0 signs peer requests, Raft streams and gossip push-pulls
with the raw cluster key (the *legacy* key); 0.2.0 (protocol level 2) with :func:`peer_key` (the
*derived* key). A mixed cluster stays whole because the choice follows the cluster's usable
protocol level as this member sees it (hvd/cluster/protocol_gate.py: the lowest level over the
Raft members, a member not heard from counting as level 1):

- signing (:func:`signs_derived`): the legacy key while the level is below 2 or unknown, the
  derived key once every member advertises 2 or more;
- verifying (:func:`accepted_kinds`): the derived key always (tried first), the legacy key while
  the level is below 2 and for :data:`LEGACY_GRACE_S` after this member saw it reach 2.

Why the legacy key is refused once the cluster is at level 2: the upgrade is then finished and
nothing legitimate signs with it (the grace covers members that learn of the last upgrade a few
gossip rounds later), so keeping it would only leave the human-typed text usable as a MAC key
forever, which issue 10 asked to end. It buys no secrecy against someone who knows the cluster
key (the derived key follows from it) but keeps the accepted forms to one. Why the loop between
the gate (fed by gossip) and gossip (joined by signed push-pulls) cannot lock a member out: a
member that knows no level yet signs with the legacy key, which a cluster still below level 2
accepts, and its push-pull tries the other key once when refused (a restarted or new member of a
finished cluster), so gossip always joins and the level becomes known. Its Raft streams are
refused until then (Raft re-sends; the first push-pull runs at start-up).

Raft streams are signed once, when they open: a sender reopens its streams when its signing key
changes (hvd/cluster/http_transport.py) rather than keeping a legacy one for as long as it lives,
and a verifier closes a stream whose key it no longer accepts (hvd/cluster/peer_auth.py).

A host with ``[tls]`` enabled never signs with nor accepts the legacy key: 0.1.0 had no TLS, so no
member of a TLS cluster can need it (a 0.1.0 cluster upgrades over plain HTTP, then switches to TLS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"hvd-cluster-key-v1"
DERIVED_KEYS_LEVEL = 2  # the protocol level (hvd 0.2.0) from which members sign with the derived key
LEGACY_GRACE_S = 60.0  # legacy signatures still accepted this long after the level reached 2 here

KeyKind = Literal["derived", "legacy"]


def derive_key(cluster_key: bytes, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (an info label such as "peer requests")."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=b"hvd " + purpose.encode()).derive(cluster_key)


def peer_key(cluster_key: bytes) -> bytes:
    """The HMAC key of signed peer requests and stream frames (hvd/cluster/peer_auth.py)."""
    return derive_key(cluster_key, "peer requests")


def join_token_key(cluster_key: bytes) -> bytes:
    """The HMAC key of join tokens (hvd/cluster/tls.py)."""
    return derive_key(cluster_key, "join tokens")


# ---- which peer key, given the cluster's usable protocol level (pure) ---------------------------

def signs_derived(level: int | None) -> bool:
    """Whether a member signs with the derived key when the cluster's usable level is ``level``
    (None: unknown). Below level 2 some member may run 0.1.0, which knows only the legacy key."""
    return level is not None and level >= DERIVED_KEYS_LEVEL


def accepted_kinds(level: int | None, reached_at: float | None, now: float) -> tuple[KeyKind, ...]:
    """The keys a verifier accepts, in the order to try them. ``reached_at``: when this member's
    view of the level last rose to 2 (None if it is not there); ``now`` on the same clock."""
    if not signs_derived(level):
        return ("derived", "legacy")
    if reached_at is not None and now - reached_at < LEGACY_GRACE_S:
        return ("derived", "legacy")  # members that have not heard of the last upgrade yet
    return ("derived",)


# ---- the adapter the signers and verifiers hold --------------------------------------------------

class KeySource(Protocol):
    """What signers and verifiers of peer requests ask for."""

    def signing(self) -> bytes:
        """The key to sign with now."""
        ...

    def accepted(self) -> tuple[bytes, ...]:
        """The keys a signature may be made with now, most likely first."""
        ...

    def other(self, key: bytes) -> bytes | None:
        """The key to try once when a signature made with ``key`` was refused (None: no other)."""
        ...


class FixedKey:
    """One key for everything (tests, and builds that are not part of a mixed cluster)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def signing(self) -> bytes:
        return self.key

    def accepted(self) -> tuple[bytes, ...]:
        return (self.key,)

    def other(self, key: bytes) -> bytes | None:
        return None


class PeerKeys:
    """This host's peer-request keys, chosen by the cluster's usable protocol level (module docstring).

    ``follow(level)`` sets where the level comes from (the protocol gate, once it exists); until
    then, and while it answers None, the level is unknown. ``legacy_allowed`` False (a host with
    TLS): the derived key alone, whatever the level.
    """

    def __init__(self, cluster_key: bytes, legacy_allowed: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.derived = peer_key(cluster_key)
        self.legacy = cluster_key
        self._legacy_allowed = legacy_allowed
        self._clock = clock
        self._level: Callable[[], int | None] = lambda: None
        self._reached_at: float | None = None

    def follow(self, level: Callable[[], int | None]) -> None:
        self._level = level

    def level(self) -> int | None:
        """The usable level now (remembering when it reached 2, for the grace of accepted_kinds)."""
        level = self._level() if self._legacy_allowed else DERIVED_KEYS_LEVEL
        if not signs_derived(level):
            self._reached_at = None
        elif self._reached_at is None:
            self._reached_at = self._clock()
        return level

    def key(self, kind: KeyKind) -> bytes:
        return self.derived if kind == "derived" else self.legacy

    def signing(self) -> bytes:
        return self.derived if signs_derived(self.level()) else self.legacy

    def other(self, key: bytes) -> bytes | None:
        """The key a refused push-pull tries next (module docstring)."""
        if not self._legacy_allowed:
            return None
        return self.legacy if key == self.derived else self.derived

    def accepted(self) -> tuple[bytes, ...]:
        level = self.level()
        if not self._legacy_allowed:
            return (self.derived,)
        return tuple(self.key(kind) for kind in accepted_kinds(level, self._reached_at, self._clock()))


def key_source(key: bytes | KeySource) -> KeySource:
    """``key`` as a KeySource (plain bytes: a FixedKey)."""
    return FixedKey(key) if isinstance(key, bytes) else key
