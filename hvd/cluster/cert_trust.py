"""Which cluster certificate may speak for which node on peer routes, and which ones are revoked.

Mutual TLS proves that a client holds *a* certificate of the cluster CA, and the peer signature's
HMAC key is shared by every member: neither says *which* member is calling. Every peer request
names its node (``X-Hvd-Node``: Raft streams and calls, forwarded proposals, compute and image
calls, gossip push-pull all sign with the node id), and a host certificate's CN is the node id it
was issued to (tls.py). A peer request is served only when the two agree and the certificate is
not revoked, so a host holding node2's certificate cannot speak as node3.

Revocations live in the catalog (``cluster.cert_revoke`` rows in ``meta``), so every member
refuses the same certificates:

- a node floor: certificates of node N issued at or before T are refused. Removing N from the
  cluster sets it (``hvd cluster remove``), as does ``hvd cluster revoke-cert --node N``; a
  certificate issued later (N re-joins with a join token) is accepted.
- a serial: that one certificate is refused (``hvd cluster revoke-cert --serial S``).

A certificate's issue time is its notBefore plus ``tls.CLOCK_SKEW`` (the cluster CA back-dates
notBefore by that much), so it compares with a floor set by another host's clock within the
usual clock skew. The functions above :class:`PeerTrust` are pure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from hvd.cluster.tls import CLOCK_SKEW
from hvd.errors import Forbidden, HvdError, Unauthorized

if TYPE_CHECKING:
    from hvd.catalog.service import Catalog

log = logging.getLogger(__name__)

FLOOR_PREFIX = "cert-floor:"  # meta key: cert-floor:<node id> -> unix seconds
SERIAL_PREFIX = "cert-serial:"  # meta key: cert-serial:<lower hex serial> -> unix seconds revoked at
MAX_TRACKED = 4096  # open peer connections remembered (a cluster has a few per member)
WATCH_INTERVAL_S = 1.0  # how soon open connections of a newly revoked certificate are closed
LOG_EVERY_S = 60.0  # refusals of one certificate are logged at most this often


@dataclass(frozen=True)
class PeerCert:
    """What the checks need of a client certificate the TLS handshake verified against the CA."""

    node: str  # its CN: the node id it was issued to
    serial: str  # lower-case hex, no leading zeros
    issued: float  # unix seconds: notBefore + CLOCK_SKEW


@dataclass(frozen=True)
class Revocations:
    """The catalog's revocations: node -> floor (unix s; issued at or before = refused), serials."""

    floors: Mapping[str, float] = field(default_factory=dict)
    serials: frozenset[str] = frozenset()


def normalize_serial(text: str) -> str:
    """A serial as typed (hex, optional ``0x`` and ``:`` separators) in the form revocations keep;
    raises ValueError when it is not hex."""
    raw = text.strip().lower().removeprefix("0x").replace(":", "")
    if not raw or len(raw) > 64 or raw.strip("0123456789abcdef"):
        raise ValueError(f"{text!r} is not a certificate serial (hex, as `openssl x509 -serial` prints it)")
    return format(int(raw, 16), "x")


def peer_cert_of(der: bytes) -> PeerCert:
    """The facts of a DER certificate (the one ``getpeercert(binary_form=True)`` returns)."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issued = cert.not_valid_before_utc + CLOCK_SKEW
    return PeerCert(str(cns[0].value) if cns else "", format(cert.serial_number, "x"), issued.timestamp())


def peer_refusal(cert: PeerCert, claimed: str, revoked: Revocations) -> HvdError | None:
    """Why a peer request from a client presenting ``cert`` and naming node ``claimed`` must be
    refused (401: the certificate is revoked or no node is named; 403: the certificate belongs to
    another node), or None when it may go on to the signature check."""
    if not claimed:
        return Unauthorized("peer requests name their node (X-Hvd-Node header)")
    if cert.serial in revoked.serials:
        return Unauthorized(f"the client certificate of node {cert.node} (serial {cert.serial}) is revoked")
    floor = revoked.floors.get(cert.node)
    if floor is not None and cert.issued <= floor:
        when = dt.datetime.fromtimestamp(floor, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return Unauthorized(f"certificates of node {cert.node} issued before {when}Z are revoked (it was removed"
                            " from the cluster, or `hvd cluster revoke-cert` named it): give it a new one"
                            " (`hvd cluster join` with a join token for that node)")
    if cert.node != claimed:
        return Forbidden(f"the client certificate was issued to node {cert.node!r}, which may not speak for"
                         f" node {claimed!r}: a peer request must come from the node its certificate names")
    return None


def read_revocations(conn: sqlite3.Connection) -> Revocations:
    """The revocations the catalog holds (runs on the catalog's database thread)."""
    floors: dict[str, float] = {}
    serials: set[str] = set()
    for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'cert-%'"):
        if key.startswith(FLOOR_PREFIX):
            floors[key[len(FLOOR_PREFIX):]] = float(value)
        elif key.startswith(SERIAL_PREFIX):
            serials.add(key[len(SERIAL_PREFIX):])
    return Revocations(floors, frozenset(serials))


def revocation_rows(revoked: Revocations) -> list[dict[str, Any]]:
    """The API's view of ``revoked``: one row per node floor and per serial."""
    rows: list[dict[str, Any]] = [
        {"node": node, "serial": None,
         "issued_before": dt.datetime.fromtimestamp(floor, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for node, floor in sorted(revoked.floors.items())]
    rows += [{"node": None, "serial": serial, "issued_before": None} for serial in sorted(revoked.serials)]
    return rows


class PeerTrust:
    """The adapter the peer middleware uses: the catalog's revocations cached in memory (read again
    when an identity command was applied), the certificate of each open peer connection, and a
    watcher that closes the connections (Raft and event streams included) of a certificate as
    soon as it is revoked."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._generation = -1
        self._revoked = Revocations()
        self._lock = asyncio.Lock()
        self._open: dict[asyncio.BaseTransport, tuple[PeerCert, str]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}  # serial -> when its last refusal was logged

    async def revocations(self) -> Revocations:
        """The current revocations (a catalog read only after an identity command was applied)."""
        state = self._catalog.state
        if state.identity_generation != self._generation:
            async with self._lock:
                generation = state.identity_generation  # read before the query it guards
                if generation != self._generation:
                    self._revoked = await self._catalog.read(read_revocations)
                    self._generation = generation
        return self._revoked

    async def check(self, transport: asyncio.BaseTransport | None, claimed: str) -> None:
        """Raise the refusal for a peer request naming ``claimed`` on ``transport`` (its TLS client
        certificate was verified against the CA by the handshake), or remember the connection."""
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) \
            else None
        if transport is None or not der:
            raise Unauthorized("peer routes need a client certificate of the cluster CA (mutual TLS)")
        if self._watcher is None or self._watcher.done():  # started with the first peer request
            self._watcher = asyncio.get_running_loop().create_task(self.watch())
        known = self._open.get(transport)
        cert = known[0] if known is not None else peer_cert_of(der)
        refusal = peer_refusal(cert, claimed, await self.revocations())
        if refusal is not None:
            now = time.monotonic()
            if now - self._logged.get(cert.serial, -LOG_EVERY_S) >= LOG_EVERY_S:  # a removed host retries a lot
                self._logged[cert.serial] = now
                log.warning("peer request refused: %s", refusal.message)
            raise refusal
        if known is None:
            self.track(transport, cert, claimed)

    def track(self, transport: asyncio.BaseTransport, cert: PeerCert, claimed: str) -> None:
        """Remember an accepted connection, so the watcher closes it if its certificate is revoked."""
        if len(self._open) >= MAX_TRACKED:  # the watcher prunes too; this bounds memory without it
            self._prune()
        self._open[transport] = (cert, claimed)

    def _prune(self) -> None:
        for transport in [t for t in self._open if t.is_closing()]:
            del self._open[transport]

    async def watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Until cancelled: forget closed connections, close those whose certificate is now revoked."""
        while True:
            await asyncio.sleep(interval)
            self._prune()
            if self._catalog.state.identity_generation == self._generation:
                continue
            try:
                revoked = await self.revocations()
            except Exception as exc:  # the next round reads again; the watcher must not end
                log.warning("reading certificate revocations failed: %s", exc)
                continue
            for transport, (cert, claimed) in list(self._open.items()):
                refusal = peer_refusal(cert, claimed, revoked)
                if refusal is not None:
                    log.warning("closing a peer connection: %s", refusal.message)
                    transport.close()
                    del self._open[transport]

    def stop(self) -> None:
        """Stop the watcher (the next peer request starts it again)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


def now_s() -> int:
    """The floor a revocation made now sets (whole seconds, as the command carries it)."""
    return int(time.time())
