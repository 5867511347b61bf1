"""The cluster CA, host certificates and the TLS contexts of the API and peer listener.

``hvd cluster init`` creates a CA (EC P-256, self-signed, 10 years) and this host's certificate;
every other host gets one signed by that CA (``hvd cluster issue`` on a CA holder, or ``hvd cluster
join`` with a join token). A host certificate names the node (CN) and every name and address peers
and clients reach it at (SAN), and is good for both ends of a connection (serverAuth + clientAuth):
peers present it as clients, so peer routes are mutual TLS.

The functions on PEM bytes are pure (the clock is an argument); only the ``*_context`` functions
read files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hvd.errors import ConfigError

if TYPE_CHECKING:
    from hvd.config import Config

log = logging.getLogger(__name__)

CA_DAYS = 3650
HOST_DAYS = 825  # the longest validity clients such as browsers accept; rotate with `hvd cluster issue|join`
MAX_SANS = 32
CLOCK_SKEW = dt.timedelta(minutes=5)  # not-before in the past: a host whose clock lags still accepts a new cert


class CertificateError(ValueError):
    """A CSR, certificate or key is malformed or not acceptable (the message says why)."""


@dataclass(frozen=True)
class TlsFiles:
    """Where one host keeps its TLS material (``[tls]`` in hvd.toml)."""

    ca_cert: Path
    ca_key: Path  # only on hosts that sign (the founder, and hosts the operator copied it to)
    cert: Path
    key: Path

    @classmethod
    def under(cls, directory: Path) -> TlsFiles:
        return cls(directory / "ca.crt", directory / "ca.key", directory / "host.crt", directory / "host.key")


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    return key


def create_ca(cluster_name: str, now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new self-signed cluster CA."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hvd cluster CA {cluster_name}"[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def fingerprint(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER: what a join token pins."""
    cert = _load_cert(cert_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc


def _general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in dict.fromkeys(s.strip() for s in sans if s.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            if not all(part and len(part) <= 63 and part.replace("-", "").replace("_", "").isalnum()
                       for part in san.split(".")) or len(san) > 253:
                raise CertificateError(f"{san!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(san))
    if not names or len(names) > MAX_SANS:
        raise CertificateError(f"a host certificate needs 1 to {MAX_SANS} names or addresses")
    return names


def host_sans(node_id: str, host_name: str, urls: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The names and addresses a host's certificate covers: its node id and host name, the host
    part of every URL it is reached at (its peer URL, its API address), and ``extra``. Wildcard
    listen addresses are left out (nobody connects to 0.0.0.0)."""
    out = [node_id, host_name]
    for url in urls:
        host = urlparse(url).hostname if "://" in url else url
        if host and host not in ("0.0.0.0", "::"):
            out.append(host)
    out.extend(extra)
    return list(dict.fromkeys(s for s in out if s))


def peer_scheme(url: str, tls: bool) -> str:
    """``url`` with the scheme this host's peers speak: a member address recorded in the Raft log
    before the cluster switched to TLS (or back) still names its host and port."""
    old, new = ("http://", "https://") if tls else ("https://", "http://")
    return new + url[len(old):] if url.startswith(old) else url


def make_csr(key: ec.EllipticCurvePrivateKey, node_id: str, sans: Sequence[str]) -> bytes:
    """A certificate signing request for ``node_id`` (CN) covering ``sans``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CsrInfo:
    node_id: str
    sans: list[str]


def read_csr(csr_pem: bytes) -> CsrInfo:
    """The node and names a CSR asks for, once its self-signature checks; raises CertificateError."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CertificateError("the signing request's signature does not match its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise CertificateError("the signing request's key is not an EC key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not str(cns[0].value).strip():
        raise CertificateError("the signing request must name exactly one node (CN)")
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the signing request names no address (subjectAltName)") from None
    except (ValueError, x509.DuplicateExtension) as exc:  # parsed lazily: a malformed one raises here
        raise CertificateError(f"the signing request's extensions cannot be read: {exc}") from None
    sans = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    sans += [str(a) for a in ext.get_values_for_type(x509.IPAddress)]
    _general_names(sans)  # same rules as ours
    return CsrInfo(str(cns[0].value), sans)


def sign_csr(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, now: dt.datetime,
             days: int = HOST_DAYS) -> bytes:
    """The host certificate (PEM) for a checked CSR, signed by the cluster CA."""
    info = read_csr(csr_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    ca = _load_cert(ca_cert_pem)
    ca_key = _load_key(ca_key_pem)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # read_csr checked it
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, info.node_id)]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(info.sans)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_host(ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str, sans: Sequence[str],
               now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a host, made where the CA key is (``init`` and ``issue``)."""
    key = new_key()
    return sign_csr(ca_cert_pem, ca_key_pem, make_csr(key, node_id, sans), now), key_pem(key)


def cert_node(cert_pem: bytes) -> str:
    """The node id (CN) a host certificate was issued to."""
    cns = _load_cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


EXPIRY_WARNING = dt.timedelta(days=30)


def validity_problem(cert_pem: bytes, now: dt.datetime) -> tuple[str, bool]:
    """("", False) while the certificate is good for longer than EXPIRY_WARNING; else what to say
    and whether it is fatal (expired or not valid yet: peers would refuse every handshake)."""
    cert = _load_cert(cert_pem)
    node = cert_node(cert_pem)
    if now < cert.not_valid_before_utc:
        return f"the certificate of {node} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z", True
    if now >= cert.not_valid_after_utc:
        return (f"the certificate of {node} expired on {cert.not_valid_after_utc:%Y-%m-%d}: rotate it"
                " (`hvd cluster issue` on a CA holder, or `hvd cluster join --force`)", True)
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        return (f"the certificate of {node} expires on {cert.not_valid_after_utc:%Y-%m-%d}: rotate it"
                " (`hvd cluster issue` on a CA holder, or `hvd cluster join --force`)", False)
    return "", False


def _tls12(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The listener's context: serves this host's certificate; asks for a client certificate but
    does not require one (public API clients have none): a presented one must chain to the cluster
    CA, and peer routes refuse a connection that presented none (see ``presented_client_cert``)."""
    ctx = _tls12(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca_cert)))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Peer calls: verify the other host against the cluster CA and its name, present our certificate."""
    ctx = _tls12(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_cert)))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def ca_only_context(ca_pem: bytes) -> ssl.SSLContext:
    """Verifies servers against the CA given as PEM text, presents no certificate (a joining host)."""
    return _tls12(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode()))


def presented_client_cert(ssl_object: object) -> bool:
    """Did the client of this connection present a certificate? (With CERT_OPTIONAL and the
    cluster CA loaded, a presented one was already verified against the CA by the handshake.)"""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return False
    return bool(ssl_object.getpeercert())


def files_for(config: Config) -> TlsFiles:
    """This host's TLS files as ``[tls]`` names them (empty = under <data_dir>/tls)."""
    default = TlsFiles.under(Path(config.host.data_dir) / "tls")
    t = config.tls
    return TlsFiles(Path(t.ca_file) if t.ca_file else default.ca_cert,
                    Path(t.ca_key_file) if t.ca_key_file else default.ca_key,
                    Path(t.cert_file) if t.cert_file else default.cert,
                    Path(t.key_file) if t.key_file else default.key)


@dataclass(frozen=True)
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext
    files: TlsFiles


def load_contexts(config: Config) -> Contexts | None:
    """The listener's and the peer client's contexts when ``[tls] enabled``, else None; a missing
    or unreadable file is a ConfigError that says how to create it."""
    if not config.tls.enabled:
        return None
    files = files_for(config)
    for path in (files.ca_cert, files.cert, files.key):
        if not path.is_file():
            raise ConfigError(f"[tls] is enabled but {path} does not exist: run `hvd cluster init` on the first host,"
                              " `hvd cluster join --token ...` (or copy what `hvd cluster issue` wrote) on the others")
    try:
        problem, fatal = validity_problem(files.cert.read_bytes(), dt.datetime.now(dt.UTC))
        contexts = Contexts(server_context(files), client_context(files), files)
    except (OSError, ssl.SSLError, CertificateError) as exc:
        raise ConfigError(f"[tls] files under {files.cert.parent} cannot be used: {exc}") from exc
    if fatal:
        raise ConfigError(f"[tls] {files.cert}: {problem}")
    if problem:
        log.warning("[tls] %s: %s", files.cert, problem)
    return contexts
