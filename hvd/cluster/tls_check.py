"""What ``hvd doctor`` says about this host's ``[tls]`` files, before the daemon (or a peer's
handshake) finds out: present and parseable, the host certificate chains to the cluster CA, is
valid now (a warning within 30 days of expiry), names this node (CN = node id: peers refuse a
certificate speaking for another node), covers the names peers and clients reach this host at,
and matches its key.

:func:`assess` is pure (PEM bytes, names and the clock in, findings out); :func:`findings` reads
the files ``[tls]`` names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from hvd.cluster.tls import EXPIRY_WARNING, files_for, validity_problem

if TYPE_CHECKING:
    from hvd.config import Config

Status = Literal["OK", "WARN", "FAIL"]
ROTATE = "`hvd cluster issue NODE` on a CA holder (copy the files over), or `hvd cluster join --force` with a token"


@dataclass(frozen=True)
class Finding:
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Reached:
    """A name this host must be reached at over TLS, and how bad it is when the certificate lacks it."""

    name: str
    what: str  # "peer URL", "listen address"
    status: Status


def _covers(cert: x509.Certificate, name: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(name) in sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        return name.lower().rstrip(".") in {d.lower() for d in sans.get_values_for_type(x509.DNSName)}


def assess(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, node_id: str, reached: Sequence[Reached],
           now: dt.datetime) -> list[Finding]:
    """The problems of a host's TLS material, or one OK finding saying what was checked."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        return [Finding("FAIL", f"the CA certificate does not parse: {exc}", "copy ca.crt from a member again")]
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return [Finding("FAIL", f"the host certificate does not parse: {exc}", ROTATE)]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return [Finding("FAIL", f"the host key does not parse: {exc}", ROTATE)]
    out: list[Finding] = []
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        out.append(Finding("FAIL", "the host certificate was not issued by the cluster CA in ca.crt: peers refuse it",
                           ROTATE))
    if now >= ca.not_valid_after_utc:
        out.append(Finding("FAIL", f"the cluster CA expired on {ca.not_valid_after_utc:%Y-%m-%d}",
                           "`hvd cluster init --force` and new certificates for every host"))
    problem, fatal = validity_problem(cert_pem, now)
    if problem:
        out.append(Finding("FAIL" if fatal else "WARN", problem, ROTATE))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if public != cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo):
        out.append(Finding("FAIL", "the host key does not match the host certificate (files of two issues mixed)",
                           ROTATE))
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn != node_id:
        out.append(Finding("FAIL", f"the host certificate names node {cn!r}, this host is node {node_id!r}: peers"
                           " refuse its requests (403)", ROTATE))
    for r in reached:
        if not _covers(cert, r.name):
            out.append(Finding(r.status, f"the host certificate does not cover {r.name} (this host's {r.what}):"
                               " TLS clients reaching it there refuse the handshake",
                               f"issue it again with --san {r.name} (or --url)"))
    if out:
        return out
    days = (cert.not_valid_after_utc - now).days
    names = ", ".join(r.name for r in reached) or "no address"
    return [Finding("OK", f"certificate of {cn} from the cluster CA, valid {days} more days"
                    f" (warns at {EXPIRY_WARNING.days}), covers {names}, matches its key")]


def reached_names(config: Config) -> list[Reached]:
    """Where this host is reached over TLS: its peer URL's host (peers check it) and its listen
    address (the API URL the daemon gives out; wildcards are nobody's address)."""
    out = []
    own = config.cluster.peer_urls().get(config.node_id, "")
    host = urlparse(own).hostname if own else None
    if host:
        out.append(Reached(host, "peer URL", "FAIL"))
    if config.api.listen not in ("0.0.0.0", "::", "") and config.api.listen != host:
        out.append(Reached(config.api.listen, "listen address", "WARN"))
    return out


def findings(config: Config, now: dt.datetime) -> list[Finding]:
    """The findings for this host's ``[tls]`` set-up (reads its files)."""
    if not config.tls.enabled:
        if config.tls.insecure_plaintext:
            return [Finding("WARN", "[tls] insecure_plaintext: passwords, tokens and the Raft stream travel in clear",
                            "`hvd cluster init` / `join`, then [tls] enabled = true")]
        return [Finding("OK", "TLS off: this host is reached on loopback only")]
    files = files_for(config)
    data = {}
    for label, path in (("CA certificate", files.ca_cert), ("host certificate", files.cert), ("host key", files.key)):
        try:
            data[label] = path.read_bytes()
        except OSError as exc:
            return [Finding("FAIL", f"[tls] {label} {path}: {exc.strerror}",
                            "`hvd cluster init` on the first host, `hvd cluster join --token ...` on the others")]
    return assess(data["CA certificate"], data["host certificate"], data["host key"], config.node_id,
                  reached_names(config), now)
