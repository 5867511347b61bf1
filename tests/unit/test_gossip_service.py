"""GossipService over real UDP sockets on loopback (push-pull through a stand-in for the peer route),
the host report, and the [gossip] config checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from hvd.cluster.gossip.core import CoreConfig, MemberEvent
from hvd.cluster.gossip.hostreport import build_report
from hvd.cluster.gossip.report import ResourceReport, significant_change
from hvd.cluster.gossip.service import PUSH_PULL_PATH, GossipService
from hvd.cluster.keys import peer_key
from hvd.cluster.peer_auth import PeerVerifier
from hvd.config import Config, load_config
from hvd.drivers.base import HostResources
from hvd.errors import ConfigError

KEY = b"test-cluster-key-0123456789"
FAST = CoreConfig(probe_interval=0.1, probe_timeout=0.04, gossip_interval=0.02, push_pull_interval=1.0)


async def _serve_push_pull(holder: dict[str, GossipService]) -> tuple[web.AppRunner, str]:
    """A minimal signed push-pull route for ``holder["svc"]`` (the daemon's is in hvd/api/internal.py)."""
    verifier = PeerVerifier(peer_key(KEY))

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        verifier.verify(request.method, request.path, request.headers, body)
        return web.json_response(holder["svc"].handle_push_pull(json.loads(body)))

    app = web.Application()
    app.router.add_post(PUSH_PULL_PATH, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[GossipService, GossipService, list[MemberEvent]]]:
    holder_a: dict[str, GossipService] = {}
    holder_b: dict[str, GossipService] = {}
    runner_a, url_a = await _serve_push_pull(holder_a)
    runner_b, url_b = await _serve_push_pull(holder_b)
    a = GossipService("a", FAST, ResourceReport(api_url=url_a), KEY, bind=("127.0.0.1", 0))
    b = GossipService("b", FAST, ResourceReport(api_url=url_b), KEY, bind=("127.0.0.1", 0),
                      seeds=lambda: {"a": url_a})
    holder_a["svc"], holder_b["svc"] = a, b
    seen: list[MemberEvent] = []
    a.on_change(seen.append)
    await a.start()
    await b.start()
    try:
        yield a, b, seen
    finally:
        await b.stop()
        await a.stop()
        await runner_a.cleanup()
        await runner_b.cleanup()


async def _until(condition: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_two_services_join_by_push_pull_then_gossip_reports_and_leave(
        pair: tuple[GossipService, GossipService, list[MemberEvent]]) -> None:
    a, b, seen = pair
    await _until(lambda: a.is_alive("b") and b.is_alive("a"))
    assert next((e.name, e.state) for e in seen if e.name == "b") == ("b", "alive")
    b.update_report(ResourceReport(vcpus_free=5, api_url=b.member("b").report.api_url))  # type: ignore[union-attr]
    await _until(lambda: (m := a.member("b")) is not None and m.report.vcpus_free == 5)
    assert a.counters()["packets_received"] > 0 and a.counters()["push_pulls_served"] >= 1
    await b.stop()
    await _until(lambda: (m := a.member("b")) is not None and m.state == "left", timeout=5)
    assert not a.is_alive("b")


async def test_packets_under_another_key_are_refused_and_counted() -> None:
    a = GossipService("a", FAST, ResourceReport(), KEY, bind=("127.0.0.1", 0))
    intruder = GossipService("x", FAST, ResourceReport(), b"another-key-0123456789", bind=("127.0.0.1", 0))
    await a.start()
    await intruder.start()
    try:
        assert a.addr is not None and intruder.addr is not None
        # the intruder learns a's address somehow (it could not by push-pull: that is signed too)
        intruder.handle_push_pull({"from": "a", "members": [
            {"node": "a", "addr": list(a.addr), "inc": 1, "state": "alive", "report": {}}]})
        await _until(lambda: a.counters().get("refused_forged", 0) >= 3)
        assert a.members()[0].name == "a" and len(a.members()) == 1
    finally:
        await intruder.stop()
        await a.stop()


async def test_a_solo_service_has_no_socket_and_is_alive_by_itself() -> None:
    solo = GossipService("only", CoreConfig(), ResourceReport())
    await solo.start()
    try:
        assert solo.is_alive("only") and not solo.is_alive("other")
        assert [m.name for m in solo.members()] == ["only"]
    finally:
        await solo.stop()


def test_the_report_counts_reserved_and_claimed_resources() -> None:
    res = HostResources(vcpus=8, memory_mib=16384, disk_gb=100, hypervisor_type="QEMU", hypervisor_version=7002000,
                        arch="x86_64", cpu_model="host")
    config = Config()
    host = {"enabled": False, "disabled_reason": "drain for maintenance", "capabilities": '{"virt_type": "kvm"}'}
    used = {"vcpus": 2, "memory_mb": 2048, "disk_gb": 10, "count": 2}
    report = build_report(config, res, host, used, "http://h:8774", 0.5)
    assert (report.vcpus_free, report.memory_mb_free, report.disk_gb_free) == (6, 16384 - 512 - 2048, 90)
    assert report.instances == 2 and report.drain and not report.enabled
    assert report.capabilities == {"virt_type": "kvm"} and report.api_url == "http://h:8774"


def test_load_jitter_is_not_a_significant_change() -> None:
    base = ResourceReport(load=1.0).wire()
    assert not significant_change(base, ResourceReport(load=1.4).wire())
    assert significant_change(base, ResourceReport(load=2.1).wire())
    assert significant_change(base, ResourceReport(load=1.0, vcpus_free=1).wire())


def test_a_probe_timeout_over_half_the_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="probe_timeout_s"):
        load_config(None, environ={"HVD_GOSSIP__PROBE_TIMEOUT_S": "0.2"})
