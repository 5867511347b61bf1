"""Peer certificates bound to the node a request claims, and revoked ones refused
(hvd/cluster/cert_trust.py): before, any host holding a valid cluster certificate could speak for
any node on peer routes, and a removed member's certificate kept working until it expired."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hvd.api.internal_join import member_refusal, san_refusal
from hvd.catalog.cmd_hosts import CertRevoke
from hvd.catalog.commands import encode
from hvd.catalog.db import connect
from hvd.catalog.service import Catalog
from hvd.catalog.state import CatalogState, decode_result
from hvd.cluster.cert_trust import (
    PeerCert,
    PeerTrust,
    Revocations,
    normalize_serial,
    peer_cert_of,
    peer_refusal,
    read_revocations,
    revocation_rows,
)
from hvd.cluster.tls import create_ca, issue_host
from hvd.errors import Forbidden, HvdError, Unauthorized

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
T = NOW.timestamp()
NODE2 = PeerCert("node2", "1f", T)


def test_a_certificate_speaks_only_for_the_node_it_names() -> None:
    assert peer_refusal(NODE2, "node2", Revocations()) is None
    refusal = peer_refusal(NODE2, "node3", Revocations())
    assert isinstance(refusal, Forbidden) and refusal.status == 403
    assert "issued to node 'node2'" in refusal.message and "'node3'" in refusal.message
    unnamed = peer_refusal(NODE2, "", Revocations())
    assert isinstance(unnamed, Unauthorized) and "X-Hvd-Node" in unnamed.message


def test_a_node_floor_refuses_certificates_issued_until_then_and_admits_later_ones() -> None:
    revoked = Revocations(floors={"node2": T})
    refusal = peer_refusal(NODE2, "node2", revoked)  # issued at the floor: refused
    assert isinstance(refusal, Unauthorized) and "certificates of node node2 issued before" in refusal.message
    assert "hvd cluster join" in refusal.message
    assert peer_refusal(PeerCert("node2", "20", T + 1), "node2", revoked) is None  # re-joined: a new one
    assert peer_refusal(PeerCert("node3", "21", T - 99), "node3", revoked) is None  # other nodes untouched
    # a revoked certificate claiming another node says it is revoked (not only "wrong node")
    wrong = peer_refusal(NODE2, "node3", revoked)
    assert isinstance(wrong, Unauthorized)


def test_a_revoked_serial_refuses_that_certificate_only() -> None:
    revoked = Revocations(serials=frozenset({"1f"}))
    refusal = peer_refusal(NODE2, "node2", revoked)
    assert isinstance(refusal, Unauthorized) and "serial 1f" in refusal.message
    assert peer_refusal(PeerCert("node2", "20", T), "node2", revoked) is None


def test_the_facts_of_a_cluster_certificate() -> None:
    ca_cert, ca_key = create_ca("c", NOW)
    pem, _ = issue_host(ca_cert, ca_key, "node2", ["node2", "10.0.0.2"], NOW)
    cert = x509.load_pem_x509_certificate(pem)
    facts = peer_cert_of(cert.public_bytes(Encoding.DER))
    assert facts.node == "node2" and facts.serial == format(cert.serial_number, "x")
    assert facts.issued == T  # notBefore is back-dated by CLOCK_SKEW: the issue time comes back


@pytest.mark.parametrize("typed", ["1F", "0x1f", "00:1F", " 001f "])
def test_serials_are_kept_in_one_form(typed: str) -> None:
    assert normalize_serial(typed) == "1f"


@pytest.mark.parametrize("typed", ["", "zz", "1" * 65])
def test_a_serial_that_is_not_hex_is_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="not a certificate serial"):
        normalize_serial(typed)


def apply(state: CatalogState, index: int, cmd: CertRevoke) -> dict[str, object]:
    return decode_result(state.apply(index, encode(cmd)))


def test_revocations_are_replicated_and_a_node_floor_only_rises() -> None:
    replicas = [CatalogState(connect(":memory:")) for _ in range(2)]
    cmds = [CertRevoke(node="node2", before=200), CertRevoke(node="node2", before=100),
            CertRevoke(serial="abc", before=150), CertRevoke(node="node4", before=300)]
    for state in replicas:
        results = [apply(state, i, c) for i, c in enumerate(cmds, start=1)]
        assert results[1]["before"] == 200  # an older floor never re-admits a refused certificate
    views = [read_revocations(s.conn) for s in replicas]
    assert views[0] == views[1] == Revocations({"node2": 200.0, "node4": 300.0}, frozenset({"abc"}))
    assert revocation_rows(views[0])[0] == {"node": "node2", "serial": None, "issued_before": "1970-01-01T00:03:20Z"}


@pytest.mark.parametrize("cmd", [CertRevoke(before=1), CertRevoke(node="n", serial="ab", before=1)])
def test_a_revocation_names_a_node_or_a_serial(cmd: CertRevoke) -> None:
    state = CatalogState(connect(":memory:"))
    with pytest.raises(HvdError, match="either a node or a serial"):
        apply(state, 1, cmd)
    assert read_revocations(state.conn) == Revocations()


def test_a_token_for_any_node_cannot_make_a_certificate_of_a_member() -> None:
    members = frozenset({"node1", "node2"})
    assert "join-token --node node2" in member_refusal("", "node2", members)
    assert member_refusal("node2", "node2", members) == ""  # a token made for it renews its certificate
    assert member_refusal("", "node4", members) == ""  # a new host


async def test_the_cache_follows_revocations_applied_to_the_catalog(tmp_path: Path) -> None:
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        trust = PeerTrust(catalog)
        assert await trust.revocations() == Revocations()
        await catalog.propose(CertRevoke(node="node2", before=int(T)))
        assert (await trust.revocations()).floors == {"node2": T}
    finally:
        catalog.close()


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_open_connections_of_a_newly_revoked_certificate_are_closed(tmp_path: Path) -> None:
    """A Raft or event stream opened before the revocation does not outlive it."""
    catalog = Catalog.open_local(tmp_path / "catalog.db", "n1")
    try:
        trust = PeerTrust(catalog)
        await trust.revocations()
        node2, node3 = FakeTransport(), FakeTransport()
        trust.track(node2, NODE2, "node2")
        trust.track(node3, PeerCert("node3", "2a", T), "node3")
        watcher = asyncio.create_task(trust.watch(interval=0.01))
        await catalog.propose(CertRevoke(node="node2", before=int(T)))
        for _ in range(200):
            if node2.closed:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        assert node2.closed and not node3.closed
    finally:
        catalog.close()


def test_a_certificate_may_not_name_another_members_address_or_id() -> None:
    members = {"node1": "https://10.0.0.1:8774", "node2": "https://[fd00::2]:8774", "node3": "https://hv3.lab:8774"}
    assert "member node1" in san_refusal("node4", ["node4", "10.0.0.1"], members)
    assert "member node2" in san_refusal("node4", ["fd00:0::2"], members)  # compared as addresses
    assert "member node3" in san_refusal("node4", ["HV3.lab."], members)  # compared as DNS names
    assert "member node3" in san_refusal("node4", ["node3"], members)
    assert san_refusal("node4", ["node4", "10.0.0.4", "hv4.lab"], members) == ""
    assert san_refusal("node1", ["node1", "10.0.0.1"], members) == ""  # a member renewing its own
