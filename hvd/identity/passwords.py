"""Password hashing with scrypt (memory-hard, in the standard library).

Hashes carry their own parameters (`scrypt$N$r$p$salt$digest`), so raising the cost keeps old
hashes verifying; `needs_rehash` tells the login path to store a new hash at today's cost.
Every hash goes through `_scrypt` (one place to count or replace the work in tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# n=2**15, r=8: 32 MiB per hash, ~80 ms here; a brute-force of stolen hashes pays the same per guess
N, R, P = 2**15, 8, 1
_MAX_N = 2**20  # a stored hash asking for more is refused, not computed (1 GiB of memory)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * n * r * p + 2**20)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, N, R, P, 32)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches `stored`; False (never an exception) for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        want = base64.b64decode(digest)
        if scheme != "scrypt" or not (1 < n_ <= _MAX_N and 0 < r_ <= 32 and 0 < p_ <= 16 and want):
            return False
        got = _scrypt(password.encode(), base64.b64decode(salt), n_, r_, p_, len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def needs_rehash(stored: str) -> bool:
    """True if `stored` was made with other parameters than today's (a weaker cost)."""
    return not stored.startswith(f"scrypt${N}${R}${P}$")
