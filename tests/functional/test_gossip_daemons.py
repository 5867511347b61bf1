"""Five `hvd daemon` processes on loopback (fake driver) gossiping about each other.

All see all alive; a SIGKILLed daemon is declared dead by every other, and alive again (with a
higher incarnation) once restarted; packets sealed under another cluster key are refused and
counted, and a daemon with that key is never admitted; a clean stop shows "left" at once.
Waits poll the API with generous limits: timings are measured by bench/gossip.py --real, not here.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hvd.cluster.gossip.codec import PacketCodec
from tests.conftest import free_port
from tests.functional.test_cluster import Cluster

NODES = [f"node{i}" for i in range(1, 6)]
WAIT_S = 60.0


class GossipCluster(Cluster):
    """test_cluster's Cluster with five members."""

    def __init__(self, base: Path, nodes: list[str]) -> None:
        super().__init__(base)
        self.ports = {node: free_port() for node in nodes}

    def hosts(self, node: str) -> dict[str, dict[str, Any]]:
        r = self.call(node, "GET", "/v1/hosts?limit=100")
        assert r.status_code == 200, r.text
        return {h["name"]: h for h in r.json()["hosts"]}

    def states(self, observer: str) -> dict[str, str]:
        """What ``observer`` says about every host; empty while it cannot answer (starting, stopped)."""
        try:
            return {name: h["state"] for name, h in self.hosts(observer).items()}
        except (AssertionError, requests.RequestException):
            self.tokens.pop(observer, None)
            return {}

    def metrics(self, node: str) -> str:
        return requests.get(self.url(node) + "/metrics", timeout=10).text

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{p.log()[-2000:]}" for n, p in self.procs.items())
                raise AssertionError(f"timed out waiting until {what}:\n{logs}")
            time.sleep(0.1)

    def all_see(self, observers: list[str], member: str, state: str) -> bool:
        return all(self.states(o).get(member) == state for o in observers)


def start_five(base: Path) -> GossipCluster:
    c = GossipCluster(base, NODES)
    for node in NODES:
        c.start(node)
    c.wait_ready(NODES, timeout=90)
    return c


@pytest.fixture
def five(tmp_path: Path) -> Iterator[GossipCluster]:
    c = start_five(tmp_path)
    try:
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node, signal.SIGKILL)


def refused(metrics: str, reason: str) -> float:
    match = re.search(rf'^hvd_gossip_packets_refused_total{{reason="{reason}"}} (\S+)$', metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_five_daemons_see_each_other_and_a_killed_one_dies_and_comes_back(five: GossipCluster) -> None:
    five.wait("every daemon sees every daemon alive",
              lambda: all(five.all_see(NODES, n, "alive") for n in NODES))
    views = five.hosts("node1")
    assert views["node2"]["reported"]["vcpus_free"] > 0  # the report travelled with the membership
    assert views["node2"]["report_age_s"] is not None and views["node2"]["incarnation"] is not None

    victim, others = "node4", [n for n in NODES if n != "node4"]
    before = five.hosts("node1")[victim]["incarnation"]
    events = requests.get(five.url("node1") + "/v1/events", stream=True, timeout=(5, 60),
                          headers={"Authorization": f"Bearer {five.tokens['node1']}"})
    five.stop(victim, signal.SIGKILL)
    five.wait("the others see the killed daemon dead", lambda: five.all_see(others, victim, "dead"))
    assert 'hvd_gossip_member_state{member="node4",state="dead"} 1.0' in five.metrics("node1")
    for line in events.iter_lines():  # the state change is on the event stream too
        e = json.loads(line[6:]) if line.startswith(b"data: ") else {}
        if e.get("type") == "host.state" and (e["host"], e["member"], e["state"]) == ("node1", victim, "dead"):
            break
    else:
        raise AssertionError("the event stream ended without node1's host.state dead event")
    events.close()

    five.start(victim)
    five.wait("the restarted daemon is alive everywhere", lambda: five.all_see(others, victim, "alive"))
    assert five.hosts("node1")[victim]["incarnation"] > before  # it refuted its death


@pytest.mark.slow
def test_a_wrong_key_is_never_admitted_and_a_clean_stop_is_left(five: GossipCluster) -> None:
    five.wait("every daemon sees every daemon alive",
              lambda: all(five.all_see(NODES, n, "alive") for n in NODES))
    # a daemon with another key: its push-pull joins are refused (401), so it learns nobody
    five.ports["intruder"] = free_port()
    good_key = "test-cluster-key-0123456789"
    peers = ", ".join(f'"{n}=http://127.0.0.1:{p}"' for n, p in five.ports.items())
    extra = f'[cluster]\npeers = [{peers}]\ncluster_key = "another-key-9876543210"\njoin = true\n'
    from tests.conftest import start_daemon

    five.procs["intruder"] = start_daemon(five.base / "intruder", extra=extra, env={"HVD_HOST__NAME": "intruder"},
                                          port=five.ports["intruder"])
    # and packets sealed under its key reach a member's gossip port (the API port number, over UDP)
    before = refused(five.metrics("node1"), "forged")
    codec = PacketCodec(b"another-key-9876543210")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in range(20):
            packet = codec.seal("intruder", [{"t": "alive", "node": "intruder", "inc": 9, "addr": ["127.0.0.1", 1],
                                              "report": {}}, {"t": "ping", "seq": seq, "node": "node1"}], time.time())
            sock.sendto(packet, ("127.0.0.1", five.ports["node1"]))
    five.wait("the forged packets are counted", lambda: refused(five.metrics("node1"), "forged") >= before + 20)
    time.sleep(3)  # long enough for the intruder's join attempts (every 2 s) and for gossip to spread
    for node in NODES:
        assert 'member="intruder"' not in five.metrics(node)
    assert good_key not in five.procs["intruder"].log()

    five.stop("node5", signal.SIGTERM)
    rest = NODES[:4]
    five.wait("a cleanly stopped daemon is seen as left", lambda: five.all_see(rest, "node5", "left"), timeout=10)
