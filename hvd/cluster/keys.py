"""Keys derived from the human-chosen cluster key (HKDF-SHA256, one info label per use).

The cluster key is text an operator typed: it is never used as a key itself. Each use gets its own
32-byte key, so a key recovered from one use (say, a leaked join-token MAC) says nothing about
another (the peer-request HMAC). Every host derives the same keys from the same cluster key.
Gossip packets derive theirs in ``gossip/codec.py`` (salt ``hvd-gossip-v1``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"hvd-cluster-key-v1"


def derive_key(cluster_key: bytes, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (an info label such as "peer requests")."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=b"hvd " + purpose.encode()).derive(cluster_key)


def peer_key(cluster_key: bytes) -> bytes:
    """The HMAC key of signed peer requests and stream frames (hvd/cluster/peer_auth.py)."""
    return derive_key(cluster_key, "peer requests")


def join_token_key(cluster_key: bytes) -> bytes:
    """The HMAC key of join tokens (hvd/cluster/tls.py)."""
    return derive_key(cluster_key, "join tokens")
