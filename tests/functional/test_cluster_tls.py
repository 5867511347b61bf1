"""A cluster over TLS: three `hvd daemon` processes on 127.0.0.2-4 set up with `hvd cluster init` and
`hvd cluster issue`, a fourth that joins with a join token.

Writes through a follower commit (forwarding and Raft over mutual TLS); a peer route refuses a
client without a cluster certificate, a certificate of another CA and plain HTTP; the public API
answers over HTTPS to a client that knows only the CA (curl --cacert, the CLI with HVD_CACERT); a
join token admits one host, through a member that holds the CA key, and only if the member's CA is
the one the token pins.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from hvd.cluster import join_token
from hvd.cluster.keys import peer_key
from hvd.cluster.peer_auth import sign_headers
from hvd.cluster.tls import TlsFiles, create_ca, fingerprint, issue_host
from tests.conftest import REPO, free_port

KEY = "tls-test-cluster-key-0123456789"
ADDRESSES = {"node1": "127.0.0.2", "node2": "127.0.0.3", "node3": "127.0.0.4", "node4": "127.0.0.5"}
FOUNDERS = ["node1", "node2", "node3"]
STATUS_PATH = "/internal/v1/cluster/status"


def hvd(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "hvd", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, **(env or {})})
    assert not check or out.returncode == 0, out.stdout + out.stderr
    return out


@dataclass
class TlsCluster:
    base: Path
    ports: dict[str, int] = field(default_factory=lambda: {n: free_port() for n in ADDRESSES})
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    tls_on: bool = True

    def url(self, node: str) -> str:
        return f"{'https' if self.tls_on else 'http'}://{ADDRESSES[node]}:{self.ports[node]}"

    def config(self, node: str) -> Path:
        return self.base / node / "hvd.toml"

    def tls(self, node: str) -> TlsFiles:
        return TlsFiles.under(self.base / node / "data" / "tls")

    @property
    def ca(self) -> str:
        return str(self.tls("node1").ca_cert)

    def write_config(self, node: str, join: bool = False) -> Path:
        members = FOUNDERS + (["node4"] if join else [])
        peers = ", ".join(f'"{n}={self.url(n)}"' for n in members)
        root = self.base / node
        root.mkdir(parents=True, exist_ok=True)
        self.config(node).write_text(f"""
[host]
name = "{node}"
data_dir = "{root / 'data'}"
instances_path = "{root / 'instances'}"
[api]
listen = "{ADDRESSES[node]}"
port = {self.ports[node]}
[identity]
admin_password = "admin-secret"
[compute]
driver = "fake"
instance_name_prefix = "instance-t{self.ports[node]}-"
[cluster]
peers = [{peers}]
cluster_key = "{KEY}"
join = {str(join).lower()}
[tls]
enabled = {str(self.tls_on).lower()}
""")
        return self.config(node)

    def start(self, node: str) -> None:
        log = open(self.base / node / "daemon.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[node] = subprocess.Popen([sys.executable, "-m", "hvd", "daemon", "-c", str(self.config(node))],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(30)
        self.procs.clear()
        self.tokens.clear()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)

    def log(self, node: str) -> str:
        return (self.base / node / "daemon.log").read_text(errors="replace")

    def health(self, node: str) -> dict[str, Any] | None:
        try:
            r = requests.get(self.url(node) + "/healthz", timeout=2, verify=self.ca)
        except requests.RequestException:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_ready(self, nodes: list[str], timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in nodes:
                assert self.procs[n].poll() is None, f"{n} exited:\n{self.log(n)[-3000:]}"
            leaders = {(h or {}).get("leader") for h in (self.health(n) for n in nodes)}
            if len(leaders) == 1 and (leader := leaders.pop()) in nodes:
                return str(leader)
            time.sleep(0.2)
        raise AssertionError("no common leader:\n" + "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in nodes))

    def call(self, node: str, method: str, path: str, body: Any = None) -> requests.Response:
        if node not in self.tokens:
            creds = {"username": "admin", "password": "admin-secret", "project": "admin"}
            r = requests.post(self.url(node) + "/v1/auth/tokens", json=creds, timeout=30, verify=self.ca)
            assert r.status_code == 201, r.text
            self.tokens[node] = r.json()["token"]
        return requests.request(method, self.url(node) + path, json=body, timeout=30, verify=self.ca,
                                headers={"Authorization": f"Bearer {self.tokens[node]}"})

    def flavors(self, node: str) -> set[str]:
        r = self.call(node, "GET", "/v1/flavors?limit=1000")
        assert r.status_code == 200, r.text
        return {f["name"] for f in r.json()["flavors"]}

    def wait_flavors(self, node: str, expected: set[str], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not expected <= (seen := self.flavors(node)):
            assert time.monotonic() < deadline, f"{node} misses {sorted(expected - seen)}"
            time.sleep(0.1)


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the daemon exited"
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {host}:{port}"
            time.sleep(0.05)


def set_up_tls(c: TlsCluster) -> None:
    """`hvd cluster init` on node1, `hvd cluster issue` there for node2 and node3."""
    for node in FOUNDERS:
        c.write_config(node)
    out = hvd("cluster", "init", "-c", str(c.config("node1"))).stdout
    assert "join token" in out and "sha256:" in out, out
    for node in FOUNDERS[1:]:
        hvd("cluster", "issue", node, "--url", c.url(node), "--out", str(c.tls(node).cert.parent),
            "-c", str(c.config("node1")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    c = TlsCluster(tmp_path_factory.mktemp("tls"))
    try:
        set_up_tls(c)
        for node in FOUNDERS:
            c.start(node)
        c.wait_ready(FOUNDERS)
        yield c
    finally:
        c.kill_all()


def test_writes_through_a_follower_commit_over_mutual_tls(cluster: TlsCluster) -> None:
    leader = cluster.wait_ready(FOUNDERS)
    follower = next(n for n in FOUNDERS if n != leader)
    r = cluster.call(follower, "POST", "/v1/flavors", {"name": "over-tls", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert r.status_code == 201, r.text  # forwarded to the leader, replicated by Raft: all over TLS
    for node in FOUNDERS:
        cluster.wait_flavors(node, {"over-tls"})
    # the daemons speak only TLS: no host was reached over plain HTTP
    assert all("http://" not in (cluster.health(n) or {}).get("leader", "") for n in FOUNDERS)


def test_peer_routes_need_a_cluster_certificate(cluster: TlsCluster, tmp_path: Path) -> None:
    url = cluster.url("node1") + STATUS_PATH
    node2 = cluster.tls("node2")

    def signed() -> dict[str, str]:
        return sign_headers(peer_key(KEY.encode()), "node2", "GET", STATUS_PATH, b"")

    # TLS with the CA but no client certificate: refused, even with a valid signature
    r = requests.get(url, headers=signed(), timeout=5, verify=cluster.ca)
    assert r.status_code == 401 and "client certificate" in r.json()["error"]["message"], r.text
    # plain HTTP to the TLS listener: no answer at all
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("https://", "http://"), headers=signed(), timeout=5)
    # a certificate of another CA: the handshake fails
    other = TlsFiles.under(tmp_path)
    ca_cert, ca_key = create_ca("intruder", dt.datetime.now(dt.UTC))
    cert, key = issue_host(ca_cert, ca_key, "node2", ["node2", "127.0.0.3"], dt.datetime.now(dt.UTC))
    other.cert.write_bytes(cert)
    other.key.write_bytes(key)
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(url, headers=signed(), timeout=5, verify=cluster.ca, cert=(str(other.cert), str(other.key)))
    # a cluster certificate and the signature (still checked: defence in depth)
    client = (str(node2.cert), str(node2.key))
    r = requests.get(url, headers=signed(), timeout=5, verify=cluster.ca, cert=client)
    assert r.status_code == 200 and r.json()["node_id"] == "node1", r.text
    forged = sign_headers(KEY.encode(), "node2", "GET", STATUS_PATH, b"")  # the raw key is not the HMAC key
    assert requests.get(url, headers=forged, timeout=5, verify=cluster.ca, cert=client).status_code == 401


def peer_status(cluster: TlsCluster, node: str, claimed: str, files: TlsFiles) -> requests.Response:
    """A signed peer request to ``node`` naming ``claimed``, presenting the certificate in ``files``."""
    headers = sign_headers(peer_key(KEY.encode()), claimed, "GET", STATUS_PATH, b"")
    return requests.get(cluster.url(node) + STATUS_PATH, headers=headers, timeout=5, verify=cluster.ca,
                        cert=(str(files.cert), str(files.key)))


def test_a_certificate_speaks_only_for_the_node_it_names(cluster: TlsCluster) -> None:
    assert peer_status(cluster, "node1", "node2", cluster.tls("node2")).status_code == 200
    r = peer_status(cluster, "node1", "node3", cluster.tls("node2"))  # node2's valid certificate, claiming node3
    assert r.status_code == 403, r.text
    assert "issued to node 'node2', which may not speak for node 'node3'" in r.json()["error"]["message"]


def test_the_public_api_serves_https_to_clients_with_the_ca(cluster: TlsCluster) -> None:
    # the member that bootstrapped identity wrote the openrc, naming its own CA file
    node, openrc = next((n, p.read_text()) for n in FOUNDERS if (p := cluster.base / n / "data" / "openrc").exists())
    ca = cluster.tls(node).ca_cert
    assert f"export HVD_URL={cluster.url(node)}" in openrc and f"export HVD_CACERT={ca}" in openrc
    env = {"HVD_URL": cluster.url("node2"), "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
           "HVD_PROJECT": "admin", "HVD_CACERT": ""}
    out = hvd("--cacert", cluster.ca, "flavor", "list", "-f", "json", env=env)
    assert "over-tls" in {f["name"] for f in json.loads(out.stdout)}
    refused = hvd("flavor", "list", env=env, check=False)  # no CA: the certificate is not trusted
    assert refused.returncode == 1 and "HVD_CACERT" in refused.stderr, refused.stderr
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(cluster.url("node1") + "/healthz", timeout=5)


def test_a_host_joins_with_a_one_time_token(cluster: TlsCluster) -> None:
    config = str(cluster.write_config("node4", join=True))
    out = hvd("cluster", "join-token", "-c", str(cluster.config("node1")), "--ttl", "600").stdout
    token = out.strip().splitlines()[-1]
    assert token.startswith(join_token.PREFIX), out

    # a token pinning another CA: the joining host refuses the member before sending anything
    pin = fingerprint(create_ca("elsewhere", dt.datetime.now(dt.UTC))[0])
    wrong = join_token.issue(KEY.encode(), pin, time.time(), 600).encode()
    r = hvd("cluster", "join", "--token", wrong, "--peer", cluster.url("node1"), "-c", config, check=False)
    assert r.returncode == 1 and "but the token pins" in r.stderr, r.stderr
    # a member without the CA key cannot sign (and the token is not spent)
    r = hvd("cluster", "join", "--token", token, "--peer", cluster.url("node2"), "-c", config, check=False)
    assert r.returncode == 1 and "holds no cluster CA key" in r.stderr, r.stderr
    hvd("cluster", "join", "--token", token, "--peer", cluster.url("node1"), "-c", config)
    assert cluster.tls("node4").cert.exists() and cluster.tls("node4").key.stat().st_mode & 0o077 == 0
    r = hvd("cluster", "join", "--token", token, "--peer", cluster.url("node1"), "-c", config, "--force",
            check=False)
    assert r.returncode == 1 and "join token already used" in r.stderr, r.stderr

    cluster.start("node4")
    wait_listening(cluster.procs["node4"], ADDRESSES["node4"], cluster.ports["node4"])
    r = cluster.call("node2", "POST", "/v1/cluster/members", {"id": "node4", "url": cluster.url("node4")})
    assert r.status_code == 201, r.text
    cluster.wait_ready([*FOUNDERS, "node4"])
    cluster.wait_flavors("node4", {"over-tls"})


def test_a_cluster_founded_without_tls_switches_to_it(tmp_path: Path) -> None:
    """Its Raft log still holds the members' http:// addresses: peers follow their own TLS setting."""
    c = TlsCluster(tmp_path, tls_on=False)
    try:
        for node in FOUNDERS:
            c.write_config(node)
            c.start(node)
        leader = c.wait_ready(FOUNDERS)
        follower = next(n for n in FOUNDERS if n != leader)
        body = {"name": "before-tls", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
        assert c.call(follower, "POST", "/v1/flavors", body).status_code == 201
        c.stop_all()  # a host with TLS and one without cannot talk: the switch is one restart of all

        c.tls_on = True
        set_up_tls(c)
        for node in FOUNDERS:
            c.start(node)
        leader = c.wait_ready(FOUNDERS)
        follower = next(n for n in FOUNDERS if n != leader)
        body["name"] = "after-tls"
        r = c.call(follower, "POST", "/v1/flavors", body)
        assert r.status_code == 201, r.text
        for node in FOUNDERS:
            c.wait_flavors(node, {"before-tls", "after-tls"})
    finally:
        c.kill_all()


def test_a_removed_members_certificate_is_refused(cluster: TlsCluster, tmp_path: Path) -> None:
    """After test_a_host_joins_with_a_one_time_token: node4 is removed, its certificate stops working on
    every member's peer routes; a certificate issued to node4 later works until its serial is revoked."""
    cluster.wait_ready([*FOUNDERS, "node4"])
    assert peer_status(cluster, "node1", "node4", cluster.tls("node4")).status_code == 200
    r = cluster.call("node2", "DELETE", "/v1/cluster/members/node4")
    assert r.status_code == 204, r.text
    deadline = time.monotonic() + 15
    for node in FOUNDERS:  # every replica applies the revocation
        while (r := peer_status(cluster, node, "node4", cluster.tls("node4"))).status_code == 200:
            assert time.monotonic() < deadline, f"{node} still accepts node4's certificate"
            time.sleep(0.2)
        assert r.status_code == 401 and "certificates of node node4 issued before" in r.json()["error"]["message"]
    listed = cluster.call("node3", "GET", "/v1/cluster/revocations").json()["revocations"]
    assert [row["node"] for row in listed] == ["node4"], listed

    # a certificate issued after the removal (node4 coming back) is accepted, until its serial is revoked
    time.sleep(1.1)  # issue times have whole seconds: the new one must be later than the removal
    ca = cluster.tls("node1")
    cert, key = issue_host(ca.ca_cert.read_bytes(), ca.ca_key.read_bytes(), "node4", ["node4"], dt.datetime.now(dt.UTC))
    fresh = TlsFiles.under(tmp_path)
    fresh.cert.write_bytes(cert)
    fresh.key.write_bytes(key)
    assert peer_status(cluster, "node1", "node4", fresh).status_code == 200
    serial = x509.load_pem_x509_certificate(cert).serial_number
    env = {"HVD_URL": cluster.url("node1"), "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret",
           "HVD_PROJECT": "admin", "HVD_CACERT": cluster.ca}
    out = hvd("cluster", "revoke-cert", "--serial", f"{serial:X}", "-f", "json", env=env)
    assert json.loads(out.stdout)[0]["serial"] == f"{serial:x}", out.stdout
    deadline = time.monotonic() + 15
    while (r := peer_status(cluster, "node1", "node4", fresh)).status_code == 200:
        assert time.monotonic() < deadline, "the revoked serial is still accepted"
        time.sleep(0.2)
    assert r.status_code == 401 and f"serial {serial:x}) is revoked" in r.json()["error"]["message"], r.text


def test_a_token_for_any_node_cannot_renew_a_members_certificate(cluster: TlsCluster, tmp_path: Path) -> None:
    out = hvd("cluster", "join-token", "-c", str(cluster.config("node1")), "--ttl", "600").stdout
    token = out.strip().splitlines()[-1]
    config = tmp_path / "hvd.toml"  # a host that calls itself node2 (a member)
    config.write_text(cluster.config("node2").read_text().replace(str(cluster.base / "node2" / "data"),
                                                                   str(tmp_path / "data")))
    r = hvd("cluster", "join", "--token", token, "--peer", cluster.url("node1"), "-c", str(config), check=False)
    assert r.returncode == 1 and "node node2 is a cluster member" in r.stderr, r.stderr
