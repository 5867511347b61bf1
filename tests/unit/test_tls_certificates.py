"""The cluster CA, host certificates, TLS contexts, join tokens and key derivation (hvd/cluster/tls.py,
join_token.py, keys.py), and the one-time use of a join token in the catalog."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvd.catalog.cmd_hosts import JoinTokenUse
from hvd.catalog.commands import encode
from hvd.cluster import join_token
from hvd.cluster.keys import join_token_key, peer_key
from hvd.cluster.tls import (
    CertificateError,
    TlsFiles,
    cert_node,
    client_context,
    create_ca,
    fingerprint,
    host_sans,
    issue_host,
    make_csr,
    new_key,
    peer_scheme,
    read_csr,
    server_context,
    sign_csr,
    validity_problem,
)
from hvd.config import load_config
from hvd.errors import ConfigError

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
KEY = b"test-cluster-key-0123456789"


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("test", NOW)


def write_host(directory: Path, ca: tuple[bytes, bytes], node: str, sans: list[str]) -> TlsFiles:
    files = TlsFiles.under(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = issue_host(ca[0], ca[1], node, sans, dt.datetime.now(dt.UTC))
    files.ca_cert.write_bytes(ca[0])
    files.cert.write_bytes(cert)
    files.key.write_bytes(key)
    return files


def test_derived_keys_differ_per_use_and_from_the_cluster_key() -> None:
    keys = {peer_key(KEY), join_token_key(KEY), KEY}
    assert len(keys) == 3 and all(len(k) == 32 for k in keys - {KEY})
    assert peer_key(KEY) == peer_key(KEY) != peer_key(KEY + b"x")  # every host derives the same key


def test_a_host_certificate_names_its_node_and_addresses(ca: tuple[bytes, bytes]) -> None:
    sans = host_sans("node1", "h1", ["https://10.0.0.1:8774", "0.0.0.0"], ["h1.example.org"])
    assert sans == ["node1", "h1", "10.0.0.1", "h1.example.org"]  # the wildcard listen address is left out
    cert, _ = issue_host(ca[0], ca[1], "node1", sans, NOW)
    assert cert_node(cert) == "node1"
    assert fingerprint(ca[0]).startswith("sha256:") and len(fingerprint(ca[0])) == 71


def test_bad_signing_requests_are_refused_with_the_reason(ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(CertificateError, match="neither an IP address nor a DNS name"):
        make_csr(new_key(), "node1", ["bad name/with slash"])
    with pytest.raises(CertificateError, match="not a PEM certificate signing request"):
        read_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    csr = make_csr(new_key(), "node9", ["node9", "10.0.0.9"])
    assert read_csr(csr).node_id == "node9" and read_csr(csr).sans == ["node9", "10.0.0.9"]
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        sign_csr(b"junk", ca[1], csr, NOW)


def test_a_signing_request_with_unreadable_extensions_is_refused_not_a_crash() -> None:
    """The join route reads the CSR before the token (it names the node): anyone can send one, so
    an extension that does not parse must be a CertificateError (400), not a ValueError (500)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    for oid in (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.BASIC_CONSTRAINTS):
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node9")]))
               .add_extension(x509.UnrecognizedExtension(oid, b"\x30\x03junk"), critical=False)
               .sign(key, hashes.SHA256()))
        with pytest.raises(CertificateError, match="extensions cannot be read"):
            read_csr(csr.public_bytes(serialization.Encoding.PEM))


async def test_a_join_request_whose_body_arrives_in_two_pieces_is_read_whole(tmp_path: Path,
                                                                              ca: tuple[bytes, bytes]) -> None:
    """StreamReader.read(n) returns what has arrived, not n bytes: a body split across TCP segments
    (or TLS records) was cut and refused as a malformed join request."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from hvd.api import internal_join

    files = TlsFiles.under(tmp_path)
    files.ca_cert.write_bytes(ca[0])
    files.ca_key.write_bytes(ca[1])
    used: list[object] = []

    async def propose(cmd: object) -> dict[str, object]:
        used.append(cmd)
        return {}

    app = web.Application()
    internal_join.install(app, internal_join.JoinSigner(KEY, files, propose))  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        token = join_token.issue(KEY, fingerprint(ca[0]), time.time(), 60).encode()
        body = json.dumps({"token": token, "csr": make_csr(new_key(), "node9", ["node9"]).decode()}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"POST {join_token.JOIN_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:100])
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler runs with only the first piece buffered
        writer.write(body[100:])
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert len(used) == 1 and b"BEGIN CERTIFICATE" in answer
    finally:
        await server.close()


@pytest.fixture
def tls_server(tmp_path: Path, ca: tuple[bytes, bytes]) -> Iterator[tuple[int, TlsFiles]]:
    """A TLS echo of 'client cert presented?' on 127.0.0.1 with the server context of node1."""
    files = write_host(tmp_path / "server", ca, "node1", ["node1", "127.0.0.1"])
    ctx = server_context(files)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"cert" if tls.getpeercert() else b"none")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], files
    stop.set()
    thread.join()
    sock.close()


def talk(port: int, ctx: ssl.SSLContext, name: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        return tls.recv(10)


def test_mutual_tls_between_hosts_of_one_ca_and_optional_client_cert(
        tls_server: tuple[int, TlsFiles], tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    port, _ = tls_server
    peer = write_host(tmp_path / "peer", ca, "node2", ["node2", "127.0.0.2"])
    assert talk(port, client_context(peer)) == b"cert"  # a peer presents its host certificate
    anonymous = ssl.create_default_context(cafile=str(peer.ca_cert))
    assert talk(port, anonymous) == b"none"  # a public API client (curl --cacert) needs none

    # a certificate of another CA is refused in the handshake
    other = write_host(tmp_path / "other", create_ca("other", NOW), "node2", ["node2"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        talk(port, client_context(other))


def test_a_certificate_for_another_host_does_not_pass_as_this_one(tls_server: tuple[int, TlsFiles],
                                                                   tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    port, _ = tls_server  # serves node1's certificate (node1, 127.0.0.1)
    peer = write_host(tmp_path / "peer", ca, "node2", ["node2"])
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        talk(port, client_context(peer), name="node3")


def test_an_expired_or_expiring_certificate_is_named_at_start(ca: tuple[bytes, bytes]) -> None:
    cert, _ = issue_host(ca[0], ca[1], "node1", ["node1"], NOW)  # valid for 825 days from NOW
    assert validity_problem(cert, NOW + dt.timedelta(days=1)) == ("", False)
    message, fatal = validity_problem(cert, NOW + dt.timedelta(days=810))
    assert not fatal and "expires on" in message and "hvd cluster issue" in message
    message, fatal = validity_problem(cert, NOW + dt.timedelta(days=826))
    assert fatal and "node1 expired on" in message
    assert validity_problem(cert, NOW - dt.timedelta(days=1))[1]


def test_peers_are_reached_with_this_hosts_scheme_whatever_the_log_recorded() -> None:
    assert peer_scheme("http://10.0.0.1:8774", tls=True) == "https://10.0.0.1:8774"
    assert peer_scheme("https://10.0.0.1:8774", tls=True) == "https://10.0.0.1:8774"
    assert peer_scheme("https://10.0.0.1:8774", tls=False) == "http://10.0.0.1:8774"
    assert peer_scheme("http://10.0.0.1:8774", tls=False) == "http://10.0.0.1:8774"


def test_tls12_is_the_minimum(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    files = write_host(tmp_path, ca, "node1", ["node1"])
    assert server_context(files).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(files).minimum_version == ssl.TLSVersion.TLSv1_2


def test_join_token_round_trip_and_refusals(ca: tuple[bytes, bytes]) -> None:
    pin = fingerprint(ca[0])
    token = join_token.issue(KEY, pin, now=1000.0, ttl_s=60)
    parsed = join_token.parse(token.encode())
    assert parsed == token
    join_token.check(parsed, KEY, pin, "node4", now=1059.0)

    with pytest.raises(join_token.JoinTokenError, match="expired"):
        join_token.check(parsed, KEY, pin, "node4", now=1060.0)
    with pytest.raises(join_token.JoinTokenError, match="not made with this cluster's key"):
        join_token.check(parsed, b"another-cluster-key-0123", pin, "node4", now=1000.0)
    with pytest.raises(join_token.JoinTokenError, match="pins another cluster CA"):
        join_token.check(parsed, KEY, fingerprint(create_ca("other", NOW)[0]), "node4", now=1000.0)
    bound = join_token.issue(KEY, pin, now=1000.0, ttl_s=60, node="node4")
    with pytest.raises(join_token.JoinTokenError, match="for node 'node4', not 'node5'"):
        join_token.check(bound, KEY, pin, "node5", now=1000.0)
    # changing any field breaks the MAC (a longer life, another node)
    for forged in (join_token.JoinToken(bound.id, bound.expires + 3600, bound.node, bound.ca, bound.mac),
                   join_token.JoinToken(bound.id, bound.expires, "", bound.ca, bound.mac)):
        with pytest.raises(join_token.JoinTokenError, match="not made with this cluster's key"):
            join_token.check(forged, KEY, pin, "node5", now=1000.0)
    infinite = base64.urlsafe_b64encode(b'{"id":"x","exp":1e999,"node":"","ca":"sha256:0","mac":"m"}').decode()
    for text in ("", "hvdjoin1.!!!", "hvdjoin1." + "A" * 2000, "abc.def",
                 "hvdjoin1." + infinite):  # an expiry JSON reads as infinity (was an OverflowError: 500)
        with pytest.raises(join_token.JoinTokenError):
            join_token.parse(text)
    with pytest.raises(join_token.JoinTokenError, match="between 1 s"):
        join_token.issue(KEY, pin, now=0, ttl_s=0)


def test_a_join_token_is_used_once_on_every_replica(tmp_path: Path) -> None:
    from hvd.catalog.service import Catalog
    from hvd.errors import Conflict

    async def run() -> None:
        catalog = Catalog.open_local(tmp_path / "catalog.db", "node1")
        try:
            use = JoinTokenUse(token_id="t1", expires=2000, node_id="node4", now=1000)
            assert (await catalog.propose(use))["node_id"] == "node4"
            with pytest.raises(Conflict, match="join token already used"):
                await catalog.propose(JoinTokenUse(token_id="t1", expires=2000, node_id="node5", now=1001))
            # a use recorded after the first token expired forgets it (it would be refused as expired)
            await catalog.propose(JoinTokenUse(token_id="t2", expires=4000, node_id="node6", now=3000))
            query = "SELECT key FROM meta WHERE key LIKE 'join%'"
            keys = await catalog.read(lambda c: [r[0] for r in c.execute(query)])
            assert keys == ["join-token:t2"]
        finally:
            catalog.close()

    assert b"cluster.join_token_use" in encode(JoinTokenUse(token_id="t", expires=1, node_id="n", now=0))
    asyncio.run(run())


def test_a_cluster_off_loopback_needs_tls_or_the_explicit_opt_out(tmp_path: Path) -> None:
    def config(text: str) -> None:
        path = tmp_path / "hvd.toml"
        path.write_text(text)
        load_config(path, environ={})

    exposed = ('[api]\nlisten = "10.0.0.1"\n[cluster]\ncluster_key = "0123456789abcdef"\n'
               'peers = ["a=http://10.0.0.1:8774", "b=http://10.0.0.2:8774"]\n')
    with pytest.raises(ConfigError, match="needs TLS: run `hvd cluster init`"):
        config(exposed)
    config(exposed + "[tls]\ninsecure_plaintext = true\n")
    with pytest.raises(ConfigError, match="must be https://"):
        config(exposed + "[tls]\nenabled = true\n")
    config(exposed.replace("http://", "https://") + "[tls]\nenabled = true\n")
    with pytest.raises(ConfigError, match="https:// but"):
        config(exposed.replace("http://", "https://"))
    config('[cluster]\ncluster_key = "0123456789abcdef"\npeers = ["a=http://127.0.0.1:1", "b=http://127.0.0.2:2"]\n')
    config('[api]\nlisten = "0.0.0.0"\n')  # all-in-one without peers: plain HTTP is the user's choice
