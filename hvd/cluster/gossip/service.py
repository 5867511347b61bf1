"""GossipService: the protocol core driven by the event loop, a UDP socket and push-pull over the peer API.

What the daemon uses: ``start``/``stop`` (a clean stop announces "left"), ``is_alive(host)``,
``members()``, ``update_report(report)``, ``on_change(callback)`` / ``changes()`` for state changes,
``handle_push_pull(state)`` for the peer route, and ``counters()`` for metrics. A daemon without
peers runs "solo": no socket at all, and it is alive by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from hvd.cluster.gossip.codec import PacketCodec, Refused, dumps
from hvd.cluster.gossip.core import ALIVE, Addr, CoreConfig, GossipCore, MemberEvent
from hvd.cluster.gossip.endpoint import UdpEndpoint
from hvd.cluster.gossip.report import ResourceReport, parse_report
from hvd.cluster.keys import FixedKey, KeySource, peer_key
from hvd.cluster.peer_auth import sign_headers
from hvd.cluster.tls import peer_scheme
from hvd.config import GossipSection

log = logging.getLogger(__name__)

PUSH_PULL_PATH = "/internal/v1/gossip/push-pull"
PUSH_PULL_TIMEOUT_S = 5.0
JOIN_RETRY_S = 2.0  # while alone, ask the seeds again this often (members of a new cluster start one by one)


@dataclass(frozen=True)
class MemberView:
    """One member as this host sees it."""

    name: str
    state: str
    incarnation: int
    report: ResourceReport
    report_age: float  # seconds since this host learned the member's current report
    addr: Addr


class GossipService:
    """Runs a :class:`GossipCore` on the event loop (see the module docstring)."""

    def __init__(self, name: str, config: CoreConfig, report: ResourceReport, cluster_key: bytes = b"",
                 bind: Addr | None = None, advertise_host: str = "",
                 seeds: Callable[[], dict[str, str]] = dict, rng: random.Random | None = None,
                 ssl_context: ssl.SSLContext | None = None, peer_keys: KeySource | None = None,
                 node_id: str = "") -> None:
        """``bind`` None = solo (no peers, no socket). ``seeds()`` gives node id -> peer API URL of the
        members to join through (read again at every attempt: membership changes at run time).
        ``cluster_key`` is the configured text (packets and push-pull derive their own keys from it);
        ``ssl_context`` is the cluster's client TLS context for push-pull when [tls] is enabled;
        ``peer_keys`` signs push-pulls (the daemon's PeerKeys; default: the derived key alone).
        ``node_id`` (default ``name``) is who push-pulls come from: peers check it against the CN of this
        host's certificate (hvd/cluster/cert_trust.py)."""
        self.name = name
        self.node_id = node_id or name
        self._config = config
        self._report = report
        self._keys = peer_keys if peer_keys is not None else FixedKey(peer_key(cluster_key))
        self._ssl = ssl_context
        self._bind = bind
        self._advertise_host = advertise_host
        self._seeds = seeds
        self._rng = rng or random.Random()
        self._codec = PacketCodec(cluster_key) if bind is not None else None
        self._endpoint: UdpEndpoint | None = None
        self._core: GossipCore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._joiner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._callbacks: list[Callable[[MemberEvent], None]] = []
        self._queues: set[asyncio.Queue[MemberEvent]] = set()
        self._pulling: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.addr: Addr | None = None
        self._stopped = False

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        addr: Addr = ("", 0)
        if self._bind is not None:
            self._endpoint = UdpEndpoint(self._on_packet)
            bound = await self._endpoint.open(*self._bind)
            addr = (self._advertise_host or bound[0], bound[1])
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True))
            log.info("gossip on udp %s:%d (advertised as %s:%d)", bound[0], bound[1], *addr)
        self.addr = addr
        self._core = GossipCore(self.name, addr, self._report.wire(), self._config, self._rng, loop.time())
        if self._bind is not None:
            self._arm()
            self._joiner = asyncio.create_task(self._join_loop())

    async def stop(self) -> None:
        """Announce "left" to every live member, then close the socket (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        core = self._core
        if self._joiner is not None:
            self._joiner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._joiner
        if core is not None and self._endpoint is not None:
            core.leave(asyncio.get_running_loop().time())
            self._flush()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._endpoint is not None:
            self._endpoint.close()
        if self._session is not None:
            await self._session.close()

    # ---- what the daemon asks ----------------------------------------------------------------

    def is_alive(self, host: str) -> bool:
        """True if ``host`` is alive (suspect counts as alive until it is declared dead)."""
        core = self._core
        if host == self.name:
            return True
        return core is not None and core.state_of(host) in (ALIVE, "suspect")

    def members(self) -> list[MemberView]:
        core = self._core
        if core is None:
            return []
        now = asyncio.get_running_loop().time()
        return [MemberView(m.name, m.state, m.incarnation, parse_report(m.report), max(0.0, now - m.report_at),
                           m.addr) for m in sorted(core.members.values(), key=lambda m: m.name)]

    def member(self, name: str) -> MemberView | None:
        return next((m for m in self.members() if m.name == name), None)

    def report_of(self, name: str) -> ResourceReport | None:
        """``name``'s last report (None if unknown): one host's, without building every view."""
        member = self._core.members.get(name) if self._core is not None else None
        return None if member is None else parse_report(member.report)

    def update_report(self, report: ResourceReport) -> None:
        """Set this host's report; others hear of a significant change (at most every few seconds)."""
        self._report = report
        if self._core is not None:
            self._core.update_report(report.wire(), asyncio.get_running_loop().time())
            self._flush()

    def on_change(self, callback: Callable[[MemberEvent], None]) -> None:
        """Call ``callback(event)`` in the loop for every member state change or new report."""
        self._callbacks.append(callback)

    async def changes(self) -> AsyncIterator[MemberEvent]:
        """Member events from now on (a slow reader loses the oldest, never blocks gossip)."""
        queue: asyncio.Queue[MemberEvent] = asyncio.Queue(1000)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    def counters(self) -> dict[str, float]:
        """Monotonic counters and current gauges, for /metrics."""
        out: dict[str, float] = dict(self.stats)
        if self._core is not None:
            out.update({f"core_{k}": v for k, v in self._core.counters.values.items()})
            out["incarnation"] = self._core.incarnation
            out["health_score"] = self._core.awareness.score
        if self._codec is not None:
            out.update({f"refused_{k}": v for k, v in self._codec.refused.items()})
        if self._endpoint is not None:
            out["send_errors"] = self._endpoint.send_errors
        return out

    def handle_push_pull(self, state: dict[str, Any]) -> dict[str, Any]:
        """The peer route's side of a push-pull: merge the caller's view, answer with ours."""
        core = self._core
        if core is None:
            raise RuntimeError("gossip is not running")
        reply = core.push_pull_state()
        core.merge_state(state, asyncio.get_running_loop().time())
        self.stats["push_pulls_served"] += 1
        self._flush()
        return reply

    # ---- the loop ----------------------------------------------------------------------------

    def _on_packet(self, data: bytes, src: Addr) -> None:
        core, codec = self._core, self._codec
        if core is None or codec is None:
            return
        self.stats["packets_received"] += 1
        try:
            sender, messages = codec.open(data, time.time())
        except Refused:
            return  # counted by reason in the codec; a flood must not become a log flood
        core.receive(src, sender, messages, asyncio.get_running_loop().time())
        self._flush()

    def _tick(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self._core is not None:
            self._core.tick(asyncio.get_running_loop().time())
            self._flush()

    def _arm(self) -> None:
        core = self._core
        if core is None or self._endpoint is None:
            return
        loop = asyncio.get_running_loop()
        when = max(core.next_wakeup(), loop.time())
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = loop.call_at(when, self._tick), when

    def _flush(self) -> None:
        core, codec, endpoint = self._core, self._codec, self._endpoint
        if core is None:
            return
        for addr, messages in core.take_outgoing():
            if codec is None or endpoint is None:
                continue
            packet = codec.seal(self.name, messages, time.time())
            self.stats["packets_sent"] += 1
            self.stats["bytes_sent"] += len(packet)
            endpoint.send(packet, addr)
        for event in core.take_events():
            self._publish(event)
        for target in core.take_push_pulls():
            member = core.members.get(target)
            url = parse_report(member.report).api_url if member else ""
            if url and target not in self._pulling:
                self._spawn(self._push_pull(target, url))
        if not core.leaving:
            self._arm()

    def _publish(self, event: MemberEvent) -> None:
        if event.state != event.previous:
            log.info("gossip: %s is %s (was %s, incarnation %d)", event.name, event.state, event.previous,
                     event.incarnation)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # a broken listener must not stop gossip
                log.exception("gossip event listener failed")
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- push-pull over the peer API ---------------------------------------------------------

    async def _push_pull(self, target: str, url: str) -> bool:
        """One exchange of full state with ``target`` at ``url``; False if it failed."""
        core, session = self._core, self._session
        if core is None or session is None:
            return False
        self._pulling.add(target)
        try:
            body = dumps(core.push_pull_state())
            timeout = aiohttp.ClientTimeout(total=PUSH_PULL_TIMEOUT_S)
            target = peer_scheme(url.rstrip("/"), self._ssl is not None)  # the log may predate TLS
            key: bytes | None = self._keys.signing()
            status, raw = 0, b""
            while key is not None:
                headers = sign_headers(key, self.node_id, "POST", PUSH_PULL_PATH, body)
                headers["Content-Type"] = "application/json"
                async with session.post(target + PUSH_PULL_PATH, data=body, headers=headers,
                                        timeout=timeout) as resp:
                    status, raw = resp.status, await resp.read()
                # refused: this member may not know the cluster's level yet (keys.py), try the other key once
                key = self._keys.other(key) if status == 401 and key == self._keys.signing() else None
            if status != 200:
                self.stats["push_pull_failures"] += 1
                log.debug("push-pull with %s: HTTP %d", target, status)
                return False
            state = json.loads(raw)
            if not isinstance(state, dict):
                raise ValueError("push-pull answer is not an object")
            core.merge_state(state, asyncio.get_running_loop().time())
            self.stats["push_pulls"] += 1
            self._flush()
            return True
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.stats["push_pull_failures"] += 1
            log.debug("push-pull with %s failed: %s", target, exc)
            return False
        finally:
            self._pulling.discard(target)

    async def _join_loop(self) -> None:
        """While this member knows no live peer, push-pull with every seed (then now and then again)."""
        while True:
            core = self._core
            if core is not None and core.live_count() <= 1:
                seeds = {n: u for n, u in self._seeds().items() if n != self.name and u}
                results = await asyncio.gather(*(self._push_pull(n, u) for n, u in seeds.items()))
                if any(results):
                    log.info("gossip: joined through %d of %d seeds", sum(results), len(seeds))
            await asyncio.sleep(JOIN_RETRY_S)


def core_config(section: GossipSection) -> CoreConfig:
    """The protocol config from ``[gossip]``."""
    return CoreConfig(
        probe_interval=section.probe_interval_s,
        probe_timeout=section.probe_timeout_s,
        indirect_checks=section.indirect_probes,
        suspicion_mult=section.suspicion_multiplier,
        suspicion_max_mult=section.suspicion_max_multiplier,
        retransmit_mult=section.retransmit_multiplier,
        gossip_interval=section.gossip_interval_s,
        gossip_nodes=section.gossip_nodes,
        push_pull_interval=section.push_pull_interval_s,
        report_min_interval=section.report_min_interval_s,
    )
