"""Join tokens: what lets a new host get a certificate from a running member.

A token is ``hvdjoin1.<base64url JSON>`` holding an id, an expiry, optionally the one node it is
for, the sha256 fingerprint of the cluster CA, and an HMAC over those (key derived from the
cluster key, ``keys.join_token_key``), so any member can check it without a shared table.

- The joining host pins the CA with the fingerprint (like kubeadm's discovery-token-ca-cert-hash):
  it fetches the member's CA certificate, refuses it unless the fingerprint matches, and only then
  sends the token and its CSR over TLS verified against that CA.
- One-time: the member that signs commits the token's use through the catalog
  (``cluster.join_token_use``) before signing, so a second use is refused on every member and
  across leader changes (a leader-local set would forget uses when leadership moves).

Everything here is pure (the clock is an argument).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from hvd.cluster.keys import join_token_key

PREFIX = "hvdjoin1."
JOIN_PATH = "/internal/v1/cluster/join"  # POST {token, csr} -> {certificate, ca_certificate}
CA_PATH = "/internal/v1/cluster/ca"  # GET: the CA certificate, checked against the token's pin
MAX_TTL_S = 7 * 86400
MAX_TOKEN_CHARS = 1024


class JoinTokenError(ValueError):
    """The token is malformed, forged, expired, for another cluster or another host."""


@dataclass(frozen=True)
class JoinToken:
    id: str
    expires: int  # unix seconds
    node: str  # "" = any node
    ca: str  # "sha256:<hex>" of the cluster CA certificate
    mac: str

    def encode(self) -> str:
        body = json.dumps({"id": self.id, "exp": self.expires, "node": self.node, "ca": self.ca, "mac": self.mac},
                          separators=(",", ":"))
        return PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def _mac(cluster_key: bytes, token_id: str, expires: int, node: str, ca: str) -> str:
    material = "\n".join(("hvd-join", token_id, str(expires), node, ca)).encode()
    return hmac.new(join_token_key(cluster_key), material, hashlib.sha256).hexdigest()


def issue(cluster_key: bytes, ca_fingerprint: str, now: float, ttl_s: int, node: str = "",
          token_id: str | None = None) -> JoinToken:
    """A new token valid for ``ttl_s`` seconds (at most a week), for ``node`` or any node."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise JoinTokenError(f"a join token lives between 1 s and {MAX_TTL_S} s, not {ttl_s}")
    token_id = token_id or secrets.token_hex(8)
    expires = int(now) + ttl_s
    mac = _mac(cluster_key, token_id, expires, node, ca_fingerprint)
    return JoinToken(token_id, expires, node, ca_fingerprint, mac)


def parse(text: str) -> JoinToken:
    """The token's fields (not checked: see :func:`check`); raises JoinTokenError when malformed."""
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > MAX_TOKEN_CHARS:
        raise JoinTokenError("not an hvd join token (they start with 'hvdjoin1.')")
    raw = text[len(PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        token = JoinToken(str(data["id"]), int(data["exp"]), str(data["node"]), str(data["ca"]), str(data["mac"]))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: an expiry of 1e999
        raise JoinTokenError("malformed join token") from exc
    if not token.ca.startswith("sha256:"):
        raise JoinTokenError("malformed join token: no CA fingerprint")
    return token


def check(token: JoinToken, cluster_key: bytes, ca_fingerprint: str, node: str, now: float) -> None:
    """Raise JoinTokenError unless ``token`` was made with this cluster's key for this CA, has not
    expired, and is for ``node`` (or any node). Whether it was used already is the catalog's part."""
    expected = _mac(cluster_key, token.id, token.expires, token.node, token.ca)
    if not hmac.compare_digest(expected, token.mac):
        raise JoinTokenError("join token refused: not made with this cluster's key")
    if token.ca != ca_fingerprint:
        raise JoinTokenError("join token refused: it pins another cluster CA")
    if now >= token.expires:
        raise JoinTokenError("join token refused: it has expired")
    if token.node and token.node != node:
        raise JoinTokenError(f"join token refused: it is for node {token.node!r}, not {node!r}")
