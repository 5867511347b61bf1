"""Deterministic simulation of the gossip core: a virtual clock and a seeded network.

Every member is a real :class:`GossipCore`; the network delivers its packets (optionally sealed
and opened by the real :class:`PacketCodec`) after a random delay (so packets reorder), drops them
with a per-link loss, blocks one-way or two-way partitions, and models crashed members (silent;
restart = a new process with incarnation 0 that joins by push-pull), paused members (no ticks;
packets wait in a bounded socket buffer) and wall-clock jumps (they only move the timestamps the
codec checks). Push-pull syncs travel as a reliable exchange when both directions are open.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hvd.cluster.gossip.codec import WINDOW_S, PacketCodec, Refused
from hvd.cluster.gossip.core import ALIVE, DEAD, LEFT, Addr, CoreConfig, GossipCore, MemberEvent

KEY = b"simulated-cluster-key-0123456789"
WALL_EPOCH = 1.8e9  # wall clock = virtual time + this (+ a member's clock offset)
SOCKET_BUFFER = 256  # packets a paused member's socket holds


@dataclass
class NetConfig:
    loss: float = 0.0  # on every link
    delay: float = 0.0005  # base one-way delay (LAN)
    jitter: float = 0.002  # uniform extra delay: packets reorder
    push_pull_delay: float = 0.003


@dataclass
class SimMember:
    name: str
    addr: Addr
    core: GossipCore
    codec: PacketCodec | None
    crashed: bool = False
    paused: bool = False
    clock_offset: float = 0.0
    loss: float = 0.0  # extra loss on every packet to or from this member
    buffer: deque[tuple[Addr, bytes | tuple[str, list[dict[str, Any]]]]] = field(default_factory=deque)
    tick_token: int = 0
    tick_at: float = float("inf")

    @property
    def running(self) -> bool:
        return not self.crashed and not self.paused


@dataclass
class Observation:
    time: float
    observer: str
    event: MemberEvent


class GossipSim:
    """``n`` members named m000.. that start knowing each other (a settled cluster)."""

    def __init__(self, n: int, seed: int, config: CoreConfig | None = None, net: NetConfig | None = None,
                 codec: bool = False) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.config = config or CoreConfig()
        self.net = net or NetConfig()
        self.use_codec = codec
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.members: dict[str, SimMember] = {}
        self.by_addr: dict[Addr, str] = {}
        self.blocked: set[tuple[str, str]] = set()  # (from, to) pairs that cannot talk
        self.observations: list[Observation] = []
        self.bytes_sent = 0
        self.packets_sent = 0
        self.refused = 0
        self.on_event: Callable[[Observation], None] | None = None
        names = [f"m{i:03d}" for i in range(n)]
        records = [{"node": nm, "addr": [nm, 7946], "inc": 0, "state": ALIVE, "report": {"id": nm}}
                   for nm in names]
        for nm in names:
            self._add(nm, known=records)

    # ---- membership --------------------------------------------------------------------------

    def _add(self, name: str, known: list[dict[str, Any]] | None) -> SimMember:
        addr = (name, 7946)
        core = GossipCore(name, addr, {"id": name}, self.config, random.Random(self.rng.random()), self.now,
                          known=known)
        codec = PacketCodec(KEY, random_bytes=self.rng.randbytes) if self.use_codec else None
        old = self.members.get(name)
        member = SimMember(name, addr, core, codec, clock_offset=old.clock_offset if old else 0.0,
                           loss=old.loss if old else 0.0)
        self.members[name] = member
        self.by_addr[addr] = name
        self._pump(member)
        return member

    def live(self) -> list[str]:
        """Members that are running (neither crashed nor paused)."""
        return [n for n, m in self.members.items() if m.running]

    def crash(self, name: str) -> None:
        member = self.members[name]
        member.crashed = True
        member.tick_token += 1
        member.buffer.clear()

    def restart(self, name: str) -> None:
        """A new process under the same name and address, incarnation 0, joining through a live member."""
        member = self._add(name, known=None)
        seeds = [n for n in self.live() if n != name]
        if seeds:
            self._push_pull(member, self.rng.choice(seeds))

    def pause(self, name: str) -> None:
        member = self.members[name]
        member.paused = True
        member.tick_token += 1

    def resume(self, name: str) -> None:
        member = self.members[name]
        member.paused = False
        while member.buffer:
            src, packet = member.buffer.popleft()
            self._receive(member, src, packet)
        self._schedule_tick(member, self.now, force=True)

    def leave(self, name: str) -> None:
        member = self.members[name]
        member.core.leave(self.now)
        self._pump(member)
        member.crashed = True
        member.tick_token += 1

    def update_report(self, name: str, report: dict[str, Any]) -> None:
        member = self.members[name]
        member.core.update_report(report, self.now)
        self._pump(member)

    def partition(self, side_a: list[str], side_b: list[str], one_way: bool = False) -> None:
        """Block a → b (and b → a unless ``one_way``)."""
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    def jump_clock(self, name: str, delta: float) -> None:
        self.members[name].clock_offset += delta

    def wall(self, member: SimMember) -> float:
        return WALL_EPOCH + self.now + member.clock_offset

    # ---- running -----------------------------------------------------------------------------

    def _at(self, time: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, fn, args))

    def run_until(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            time, _, fn, args = heapq.heappop(self._heap)
            self.now = max(self.now, time)
            fn(*args)
        self.now = max(self.now, until)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def wait_for(self, condition: Callable[[], bool], timeout: float, step: float = 0.02) -> float | None:
        """Run until ``condition()`` holds (checked every ``step``); the time it took, or None."""
        start = self.now
        while not condition():
            if self.now - start >= timeout:
                return None
            self.run_for(step)
        return self.now - start

    def _schedule_tick(self, member: SimMember, when: float, force: bool = False) -> None:
        when = max(when, self.now)
        if force or when < member.tick_at or member.tick_at < self.now:
            member.tick_token += 1
            member.tick_at = when
            self._at(when, self._tick, member, member.tick_token)

    def _tick(self, member: SimMember, token: int) -> None:
        if token != member.tick_token or not member.running:
            return
        member.tick_at = float("inf")
        member.core.tick(self.now)
        self._pump(member)

    def _pump(self, member: SimMember) -> None:
        core = member.core
        for addr, messages in core.take_outgoing():
            self._send(member, addr, messages)
        for event in core.take_events():
            obs = Observation(self.now, member.name, event)
            self.observations.append(obs)
            if self.on_event is not None:
                self.on_event(obs)
        for target in core.take_push_pulls():
            self._push_pull(member, target)
        if member.running:
            self._schedule_tick(member, core.next_wakeup())

    def _lost(self, src: SimMember, dst_name: str) -> bool:
        if (src.name, dst_name) in self.blocked:
            return True
        dst = self.members[dst_name]
        loss = 1 - (1 - self.net.loss) * (1 - src.loss) * (1 - dst.loss)
        return self.rng.random() < loss

    def _send(self, src: SimMember, addr: Addr, messages: list[dict[str, Any]]) -> None:
        dst_name = self.by_addr.get(addr)
        payload: bytes | tuple[str, list[dict[str, Any]]]
        if src.codec is not None:
            payload = src.codec.seal(src.name, messages, self.wall(src))
            size = len(payload)
        else:
            payload = (src.name, messages)
            size = len(repr(messages))  # no codec: a rough size, only for relative figures
        self.bytes_sent += size
        self.packets_sent += 1
        if dst_name is None or self._lost(src, dst_name):
            return
        delay = self.net.delay + self.rng.uniform(0, self.net.jitter)
        self._at(self.now + delay, self._deliver, dst_name, src.addr, payload)

    def _deliver(self, dst_name: str, src: Addr, payload: bytes | tuple[str, list[dict[str, Any]]]) -> None:
        member = self.members[dst_name]
        if member.crashed:
            return
        if member.paused:
            if len(member.buffer) < SOCKET_BUFFER:
                member.buffer.append((src, payload))
            return
        self._receive(member, src, payload)
        self._pump(member)

    def _receive(self, member: SimMember, src: Addr, payload: bytes | tuple[str, list[dict[str, Any]]]) -> None:
        if isinstance(payload, bytes):
            assert member.codec is not None
            try:
                sender, messages = member.codec.open(payload, self.wall(member))
            except Refused:
                self.refused += 1
                return
        else:
            sender, messages = payload
        member.core.receive(src, sender, messages, self.now)

    def _push_pull(self, src: SimMember, target: str) -> None:
        if target not in self.members or (src.name, target) in self.blocked or (target, src.name) in self.blocked:
            return
        if self.use_codec and abs(src.clock_offset - self.members[target].clock_offset) > WINDOW_S:
            self.refused += 1  # the peer API's signature window refuses it, as the codec does for UDP
            return
        state = src.core.push_pull_state()
        self._at(self.now + self.net.push_pull_delay, self._push_pull_arrive, src.name, target, state)

    def _push_pull_arrive(self, src_name: str, target: str, state: dict[str, Any]) -> None:
        dst = self.members[target]
        if not dst.running:
            return  # a connection to a dead or stopped process: the exchange fails
        reply = dst.core.push_pull_state()
        dst.core.merge_state(state, self.now)
        self._pump(dst)
        self._at(self.now + self.net.push_pull_delay, self._push_pull_reply, src_name, reply)

    def _push_pull_reply(self, src_name: str, reply: dict[str, Any]) -> None:
        src = self.members[src_name]
        if src.running:
            src.core.merge_state(reply, self.now)
            self._pump(src)

    # ---- what members believe ----------------------------------------------------------------

    def states_of(self, name: str, observers: list[str] | None = None) -> dict[str, str | None]:
        """What each (running, by default) observer believes about ``name``."""
        return {o: self.members[o].core.state_of(name) for o in (observers or self.live()) if o != name}

    def all_see(self, name: str, states: tuple[str, ...], observers: list[str] | None = None) -> bool:
        return all(s in states for s in self.states_of(name, observers).values())

    def false_deaths(self, truly_alive: set[str]) -> list[Observation]:
        """Observations declaring dead a member that was running the whole time."""
        return [o for o in self.observations if o.event.state == DEAD and o.event.name in truly_alive]


GONE = (DEAD, LEFT)
