"""Peer keys across a rolling upgrade from hvd 0.1.0 (raw cluster key) to 0.2.0 (HKDF-derived key)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from hvd.cluster.gossip.core import CoreConfig
from hvd.cluster.gossip.report import ResourceReport
from hvd.cluster.gossip.service import PUSH_PULL_PATH, GossipService
from hvd.cluster.keys import LEGACY_GRACE_S, PeerKeys, accepted_kinds, peer_key, signs_derived
from hvd.cluster.peer_auth import NONCE_HEADER, FrameSealer, PeerAuthError, PeerVerifier, sign_headers

CLUSTER_KEY = b"rolling-upgrade-key-0123456789"
PATH = "/internal/v1/raft/stream"


@pytest.mark.parametrize(("level", "derived"), [(None, False), (1, False), (2, True), (3, True)])
def test_members_sign_with_the_legacy_key_until_every_member_applies_level_2(level: int | None,
                                                                           derived: bool) -> None:
    assert signs_derived(level) is derived


def test_verifiers_try_the_derived_key_first_and_retire_the_legacy_key_after_a_grace() -> None:
    assert accepted_kinds(None, None, 0.0) == ("derived", "legacy")  # level unknown
    assert accepted_kinds(1, None, 0.0) == ("derived", "legacy")  # a 0.1.0 member is still there
    assert accepted_kinds(2, 100.0, 100.0 + LEGACY_GRACE_S - 1) == ("derived", "legacy")  # others may not know yet
    assert accepted_kinds(2, 100.0, 100.0 + LEGACY_GRACE_S) == ("derived",)


class Level:
    def __init__(self) -> None:
        self.value: int | None = None

    def __call__(self) -> int | None:
        return self.value


def _keys(level: Level, clock: list[float]) -> PeerKeys:
    keys = PeerKeys(CLUSTER_KEY, clock=lambda: clock[0])
    keys.follow(level)
    return keys


def test_peer_keys_follow_the_level_both_ways() -> None:
    level, clock = Level(), [0.0]
    keys = _keys(level, clock)
    assert keys.signing() == CLUSTER_KEY  # unknown: what a 0.1.0 member verifies with
    level.value = 2
    assert keys.signing() == peer_key(CLUSTER_KEY)
    assert keys.accepted() == (peer_key(CLUSTER_KEY), CLUSTER_KEY)
    clock[0] = LEGACY_GRACE_S
    assert keys.accepted() == (peer_key(CLUSTER_KEY),)
    level.value = 1  # a member not heard from yet (counted as level 1) joined
    assert keys.signing() == CLUSTER_KEY and CLUSTER_KEY in keys.accepted()
    assert keys.other(CLUSTER_KEY) == peer_key(CLUSTER_KEY) and keys.other(peer_key(CLUSTER_KEY)) == CLUSTER_KEY


def test_a_host_with_tls_uses_and_accepts_the_derived_key_alone() -> None:
    keys = PeerKeys(CLUSTER_KEY, legacy_allowed=False)  # 0.1.0 had no TLS: no member can need the raw key
    keys.follow(lambda: 1)
    assert keys.signing() == peer_key(CLUSTER_KEY)
    assert keys.accepted() == (peer_key(CLUSTER_KEY),) and keys.other(keys.signing()) is None


def test_a_verifier_below_level_2_accepts_0_1_0_and_0_2_0_signatures() -> None:
    level, clock = Level(), [0.0]
    level.value = 1
    verifier = PeerVerifier(_keys(level, clock))
    now = time.time()
    legacy = sign_headers(CLUSTER_KEY, "old", "POST", PATH, b"x", now=now)  # how 0.1.0 signs
    derived = sign_headers(peer_key(CLUSTER_KEY), "new", "POST", PATH, b"x", now=now)
    assert verifier.verify("POST", PATH, legacy, b"x", now=now) == "old"
    assert verifier.verify("POST", PATH, derived, b"x", now=now) == "new"
    other = sign_headers(b"another cluster", "x", "POST", PATH, b"x", now=now)
    with pytest.raises(PeerAuthError, match="bad peer signature"):
        verifier.verify("POST", PATH, other, b"x", now=now)


def test_after_the_upgrade_the_raw_cluster_key_no_longer_signs() -> None:
    level, clock = Level(), [0.0]
    level.value = 2
    keys = _keys(level, clock)
    assert keys.signing() == peer_key(CLUSTER_KEY)  # this member sees level 2 from time 0
    verifier = PeerVerifier(keys)
    clock[0] = LEGACY_GRACE_S + 1
    now = time.time()
    legacy = sign_headers(CLUSTER_KEY, "old", "POST", PATH, b"x", now=now)
    with pytest.raises(PeerAuthError, match="bad peer signature"):
        verifier.verify("POST", PATH, legacy, b"x", now=now)
    derived = sign_headers(peer_key(CLUSTER_KEY), "new", "POST", PATH, b"x", now=now)
    assert verifier.verify("POST", PATH, derived, b"x", now=now) == "new"


def test_a_stream_opened_with_the_legacy_key_is_closed_once_that_key_is_retired() -> None:
    level, clock = Level(), [0.0]
    level.value = 1
    verifier = PeerVerifier(_keys(level, clock))

    def verify_some_request() -> None:  # what refreshes the verifier's view (on the event loop)
        headers = sign_headers(peer_key(CLUSTER_KEY), "n3", "POST", "/internal/v1/raft/propose", b"")
        verifier.verify("POST", "/internal/v1/raft/propose", headers, b"")

    headers = sign_headers(CLUSTER_KEY, "n2", "GET", PATH, b"")
    node, opener = verifier.open_stream("GET", PATH, headers)
    sealer = FrameSealer(CLUSTER_KEY, headers[NONCE_HEADER])
    assert node == "n2" and opener.open(sealer.seal(b"one")) == b"one"
    level.value = 2
    verify_some_request()
    assert opener.open(sealer.seal(b"two")) == b"two"  # within the grace
    clock[0] = LEGACY_GRACE_S + 1
    assert opener.open(sealer.seal(b"three")) == b"three"  # the verifier has not looked since
    verify_some_request()
    with pytest.raises(PeerAuthError, match="no longer accepted"):
        opener.open(sealer.seal(b"four"))
    # a stream opened with the derived key is not affected
    headers = sign_headers(peer_key(CLUSTER_KEY), "n2", "GET", PATH, b"")
    _, opener = verifier.open_stream("GET", PATH, headers)
    assert opener.open(FrameSealer(peer_key(CLUSTER_KEY), headers[NONCE_HEADER]).seal(b"five")) == b"five"


async def test_a_member_that_does_not_know_the_level_yet_still_joins_an_upgraded_cluster_by_push_pull() -> None:
    """A restarted (or new) member of a cluster that finished its upgrade signs with the legacy key
    until gossip tells it the level; the upgraded member refuses that key, so the joining
    push-pull tries the derived key once and gossip (then the level) comes through."""
    upgraded = PeerVerifier(peer_key(CLUSTER_KEY))  # accepts the derived key only
    holder: dict[str, GossipService] = {}

    async def push_pull(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            upgraded.verify(request.method, request.path, request.headers, body)
        except PeerAuthError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        return web.json_response(holder["a"].handle_push_pull(json.loads(body)))

    app = web.Application()
    app.router.add_post(PUSH_PULL_PATH, push_pull)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    fast = CoreConfig(probe_interval=0.1, probe_timeout=0.04, gossip_interval=0.02, push_pull_interval=30.0)
    keys = PeerKeys(CLUSTER_KEY)  # follows nothing: the level is unknown
    assert keys.signing() == CLUSTER_KEY
    a = holder["a"] = GossipService("a", fast, ResourceReport(api_url=url), CLUSTER_KEY, bind=("127.0.0.1", 0))
    b = GossipService("b", fast, ResourceReport(), CLUSTER_KEY, bind=("127.0.0.1", 0), seeds=lambda: {"a": url},
                      peer_keys=keys)
    await a.start()
    await b.start()
    try:
        async with asyncio.timeout(20):
            while not (b.is_alive("a") and a.is_alive("b")):
                await asyncio.sleep(0.02)
        assert a.counters()["push_pulls_served"] >= 1
    finally:
        await b.stop()
        await a.stop()
        await runner.cleanup()
