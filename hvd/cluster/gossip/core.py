"""The pure SWIM + Lifeguard protocol core: no sockets, no asyncio, no clock of its own.

The adapter feeds it packets (``receive``) and clock ticks (``tick``) with the current time,
and drains what it produced: packets to send (``take_outgoing``), state-change events
(``take_events``) and push-pull syncs to run (``take_push_pulls``). ``next_wakeup`` says when
it wants the next tick. Randomness comes from the ``random.Random`` it is given, so a
simulation with a seeded generator and a virtual clock replays exactly.

Protocol (as HashiCorp memberlist): every probe interval (× the awareness score + 1) one member,
in a shuffled round-robin, gets a ping; without an ack within the probe timeout, ``indirect_checks``
alive members are asked to ping it for us (they answer ack, or nack when the target stays silent,
which tells us our own network is fine). Without any ack by the end of the interval the member
becomes suspect. A suspect member is declared dead after a suspicion timeout that scales with
log10(n) and shrinks as other members independently confirm; any member refutes its own
suspicion by announcing itself alive with a higher incarnation. Alive/suspect/dead messages
travel piggy-backed on every packet and on a fast gossip round, each retransmitted
``retransmit_mult × ceil(log10(n + 1))`` times; a periodic push-pull exchanges full state
(over TCP, carried by the adapter) so partitions heal and late joiners catch up.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hvd.cluster.gossip.broadcast import BroadcastQueue, wire_size
from hvd.cluster.gossip.lifeguard import Awareness, Suspicion, retransmit_limit, suspicion_min_timeout
from hvd.cluster.gossip.report import significant_change

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)
Addr = tuple[str, int]
Message = dict[str, Any]


@dataclass(frozen=True)
class CoreConfig:
    """Protocol timing and fan-out (the daemon fills it from ``[gossip]``; see hvd/config.py)."""

    probe_interval: float = 0.3
    probe_timeout: float = 0.12
    indirect_checks: int = 3
    suspicion_mult: float = 3.0
    suspicion_max_mult: float = 3.0
    retransmit_mult: int = 4
    gossip_interval: float = 0.1
    gossip_nodes: int = 3
    push_pull_interval: float = 30.0
    awareness_max: int = 8
    packet_budget: int = 1200  # bytes of messages per UDP packet: under a 1500-byte MTU after sealing
    report_min_interval: float = 2.0
    report_refresh: float = 60.0


@dataclass
class Member:
    """What this member knows about one member (itself included)."""

    name: str
    addr: Addr
    incarnation: int
    state: str
    report: dict[str, Any]
    state_since: float
    report_at: float

    def record(self) -> dict[str, Any]:
        """This member's entry in a push-pull state message."""
        return {"node": self.name, "addr": list(self.addr), "inc": self.incarnation, "state": self.state,
                "report": self.report}


@dataclass(frozen=True)
class MemberEvent:
    """A member changed state (``previous`` differs from ``state``) or announced a new report."""

    name: str
    state: str
    previous: str
    incarnation: int
    report_changed: bool


@dataclass
class _Probe:
    seq: int
    target: str
    timeout_at: float
    deadline: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass
class _Relay:
    """An indirect probe run for another member: forward the ack, or nack at the deadline."""

    origin: Addr
    origin_seq: int
    deadline: float
    nack: bool


@dataclass
class _Counters:
    values: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


def _addr(value: Any) -> Addr:
    host, port = value
    return str(host), int(port)


class GossipCore:
    """One member's view of the cluster and its side of the protocol (see the module docstring)."""

    def __init__(self, name: str, addr: Addr, report: dict[str, Any], config: CoreConfig, rng: random.Random,
                 now: float, incarnation: int = 0, known: list[dict[str, Any]] | None = None) -> None:
        """``known``: push-pull style member records adopted silently (a simulation starting from a
        settled cluster); a daemon starts alone and joins by push-pull instead."""
        self.name = name
        self.config = config
        self.rng = rng
        self.awareness = Awareness(config.awareness_max)
        self.members: dict[str, Member] = {
            name: Member(name, addr, incarnation, ALIVE, dict(report), now, now)
        }
        self.counters = _Counters()
        self.leaving = False
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._outgoing: list[tuple[Addr, list[Message]]] = []
        self._events: list[MemberEvent] = []
        self._push_pulls: list[str] = []
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe_soon: list[str] = []  # members that just turned suspect: probe them next
        self._relays: dict[int, _Relay] = {}
        self._last_tick = now
        self._next_probe = now + rng.uniform(0, config.probe_interval)  # stagger members started together
        self._next_gossip = now
        self._next_push_pull = now + rng.uniform(0, config.push_pull_interval)
        self._last_announce = now
        self._latest_report = dict(report)
        self._report_dirty = False
        self._live_cache: dict[bool, list[str]] = {}
        self._broadcasts.queue(name, self._alive_msg(self.me))  # tell whoever we meet that we exist
        for record in known or []:
            if record["node"] != name:
                self.members[record["node"]] = Member(record["node"], _addr(record["addr"]), int(record["inc"]),
                                                      str(record["state"]), dict(record["report"]), now, now)
        if known:
            self._next_push_pull = now + rng.uniform(0, self._push_pull_interval())

    # ---- views -------------------------------------------------------------------------------

    @property
    def me(self) -> Member:
        return self.members[self.name]

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    def live_count(self) -> int:
        """Members believed alive or suspect, this one included (the n of the log(n) scalings)."""
        return len(self._live_others()) + (0 if self.leaving else 1)

    def state_of(self, name: str) -> str | None:
        member = self.members.get(name)
        return member.state if member else None

    def next_wakeup(self) -> float:
        """The earliest time ``tick`` has work to do."""
        # at least once per probe interval: a longer silence is how a stall is recognised
        times = [self._next_probe, self._next_push_pull, self._last_announce + self.config.report_refresh,
                 self._last_tick + self.config.probe_interval]
        if self._probe is not None:
            times.append(self._probe.deadline if self._probe.indirect_sent or self._probe.acked
                         else self._probe.timeout_at)
        if self._relays:
            times.append(min(r.deadline for r in self._relays.values()))
        if self._suspicions:
            times.append(min(s.deadline for s in self._suspicions.values()))
        if len(self._broadcasts):
            times.append(self._next_gossip)
        if self._report_dirty:
            times.append(self._last_announce + self.config.report_min_interval)
        return min(times)

    # ---- outputs -----------------------------------------------------------------------------

    def take_outgoing(self) -> list[tuple[Addr, list[Message]]]:
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def take_push_pulls(self) -> list[str]:
        out, self._push_pulls = self._push_pulls, []
        return out

    # ---- inputs ------------------------------------------------------------------------------

    def receive(self, src: Addr, sender: str, messages: list[Message], now: float) -> None:
        """Handle one authenticated packet from ``sender`` at ``src``."""
        if self.leaving:
            return
        for msg in messages:
            try:
                self._dispatch(src, msg, now)
            except (KeyError, TypeError, ValueError):
                self.counters.add("malformed_messages")
        known = self.members.get(sender)
        if known is not None and known.name != self.name:
            # a member we suspect or hold dead is talking: tell it, so it refutes straight to us
            if known.state == SUSPECT:
                self._send(src, [{"t": "suspect", "node": sender, "inc": known.incarnation, "from": self.name}])
            elif known.state in (DEAD, LEFT):
                self._send(src, [self._dead_msg(known, known.name if known.state == LEFT else self.name)])

    def tick(self, now: float) -> None:
        """Advance timers to ``now``: probes, indirect-probe nacks, suspicions, gossip, push-pull."""
        if self.leaving:
            return
        if now - self._last_tick > self.config.probe_interval * 2:
            self._stalled(now)
        self._last_tick = now
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                if relay.nack:
                    self._send(relay.origin, [{"t": "nack", "seq": relay.origin_seq}])
        self._advance_probe(now)
        for name, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline:
                member = self.members[name]
                self.counters.add("suspicion_timeouts")
                self._apply_dead({"t": "dead", "node": name, "inc": member.incarnation, "from": self.name}, now)
        if len(self._broadcasts) and now >= self._next_gossip:
            self._gossip()
            self._next_gossip = now + self.config.gossip_interval
        if self._report_dirty and now >= self._last_announce + self.config.report_min_interval:
            self._announce(now)
        elif now >= self._last_announce + self.config.report_refresh:
            self._announce(now)  # unchanged, but keeps report ages bounded and heals a lost update
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._push_pull_interval()
            peers = self._live_others()
            if peers:
                self._push_pulls.append(self.rng.choice(peers))
            dead = [n for n, m in self.members.items() if m.state == DEAD]
            if dead:
                # nobody probes or gossips to the dead: this is how the two sides of a healed
                # partition find each other again (Serf's reconnect)
                self._push_pulls.append(self.rng.choice(dead))

    def update_report(self, report: dict[str, Any], now: float) -> bool:
        """Set this member's report; a significant change is announced (at most once per
        ``report_min_interval``). Returns True if it will be announced."""
        self._latest_report = dict(report)
        if not significant_change(self.me.report, report):
            return self._report_dirty
        self._report_dirty = True
        if now >= self._last_announce + self.config.report_min_interval and not self.leaving:
            self._announce(now)
        return True

    def push_pull_state(self) -> dict[str, Any]:
        """This member's full view, for a push-pull exchange."""
        return {"from": self.name, "members": [m.record() for m in self.members.values()]}

    def merge_state(self, state: dict[str, Any], now: float) -> None:
        """Merge a peer's full view (the other half of a push-pull exchange)."""
        for record in state.get("members", []):
            try:
                node, inc, st = str(record["node"]), int(record["inc"]), str(record["state"])
                if st == ALIVE:
                    self._apply_alive({"t": "alive", "node": node, "inc": inc, "addr": record["addr"],
                                       "report": dict(record.get("report") or {})}, now)
                elif st == LEFT:
                    self._apply_dead({"t": "dead", "node": node, "inc": inc, "from": node}, now)
                elif st in (DEAD, SUSPECT):
                    # a remote "dead" is only a suspicion here: we time it out ourselves (memberlist)
                    self._apply_suspect({"t": "suspect", "node": node, "inc": inc,
                                         "from": str(state.get("from", ""))}, now)
            except (KeyError, TypeError, ValueError):
                self.counters.add("malformed_messages")

    def leave(self, now: float) -> None:
        """Announce a clean departure to every live member at once; stop taking part."""
        me = self.me
        msg = {"t": "dead", "node": self.name, "inc": me.incarnation, "from": self.name}
        for other in self._live_others():
            self._send(self.members[other].addr, [msg])
        self._set_state(me, LEFT, now)
        self.leaving = True

    # ---- probing -----------------------------------------------------------------------------

    def _advance_probe(self, now: float) -> None:
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent and now >= probe.timeout_at:
            self._send_indirect(probe)
        if probe is not None and (probe.acked or now >= probe.deadline):
            self._finish_probe(probe, now)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        interval = self.awareness.scale(self.config.probe_interval)
        self._next_probe = now + interval
        target = self._next_target()
        if target is None:
            return
        member = self.members[target]
        self._seq += 1
        self._probe = _Probe(self._seq, target, now + self.config.probe_timeout, now + interval)
        msgs: list[Message] = [{"t": "ping", "seq": self._seq, "node": target}]
        if member.state == SUSPECT:  # give it the accusation at once, so it can refute
            msgs.append({"t": "suspect", "node": target, "inc": member.incarnation, "from": self.name})
        self.counters.add("probes")
        self._send(member.addr, msgs)

    def _next_target(self) -> str | None:
        while self._probe_soon:
            name = self._probe_soon.pop(0)
            if self.state_of(name) == SUSPECT:
                return name
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                member = self.members.get(name)
                if member is not None and member.state in (ALIVE, SUSPECT):
                    return name
            self._probe_order = [n for n, m in self.members.items()
                                 if n != self.name and m.state in (ALIVE, SUSPECT)]
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _send_indirect(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self.members[probe.target]
        helpers = [n for n in self._live_others(alive_only=True) if n != probe.target]
        chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        probe.expected_nacks = len(chosen)
        req = {"t": "preq", "seq": probe.seq, "node": probe.target, "addr": list(target.addr), "nack": True}
        for name in chosen:
            self._send(self.members[name].addr, [req])
        self.counters.add("indirect_probes", len(chosen))

    def _finish_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        if probe.acked:
            self.awareness.apply(-1)
            return
        # nacks from helpers prove our own network works; missing ones count against our health
        delta = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
        self.awareness.apply(max(0, delta))
        member = self.members.get(probe.target)
        if member is None or member.state not in (ALIVE, SUSPECT):
            return
        self.counters.add("failed_probes")
        self._apply_suspect({"t": "suspect", "node": probe.target, "inc": member.incarnation, "from": self.name},
                            now)

    def _stalled(self, now: float) -> None:
        """This process did not run for a while (paused, overloaded): whatever timed out meanwhile is
        our fault, not the others'. Count it against our health, drop the probe in flight and give
        pending suspicions time to hear refutations that may be waiting in the socket buffer."""
        self.counters.add("stalls")
        self.awareness.apply(1)
        self._probe = None
        self._relays.clear()
        grace = now + self.config.probe_interval
        for suspicion in self._suspicions.values():
            suspicion.deadline = max(suspicion.deadline, grace)
        self._next_probe = max(self._next_probe, now)

    # ---- messages ----------------------------------------------------------------------------

    def _dispatch(self, src: Addr, msg: Message, now: float) -> None:
        kind = msg["t"]
        if kind == "ping":
            if msg["node"] == self.name:  # a ping meant for a former owner of this address is ignored
                self._send(src, [{"t": "ack", "seq": int(msg["seq"])}])
        elif kind == "ack":
            self._on_ack(int(msg["seq"]))
        elif kind == "nack":
            probe = self._probe
            if probe is not None and probe.seq == int(msg["seq"]):
                probe.nacks += 1
        elif kind == "preq":
            self._seq += 1
            self._relays[self._seq] = _Relay(src, int(msg["seq"]), now + self.config.probe_timeout,
                                             bool(msg.get("nack")))
            self._send(_addr(msg["addr"]), [{"t": "ping", "seq": self._seq, "node": str(msg["node"])}])
        elif kind == "alive":
            self._apply_alive(msg, now)
        elif kind in ("suspect", "dead"):
            about = self.members.get(str(msg["node"]))
            if about is not None and int(msg["inc"]) < about.incarnation and about.state == ALIVE:
                # the sender accuses on stale news: send it the refutation it missed
                self._send(src, [self._alive_msg(about)])
                return
            if kind == "suspect":
                self._apply_suspect(msg, now)
            else:
                self._apply_dead(msg, now)
            if msg["node"] == self.name and not self.leaving:
                # answer the accuser directly too: a refutation that only spreads by gossip can miss it
                self._send(src, [self._alive_msg(self.me)])
        else:
            self.counters.add("unknown_messages")

    def _on_ack(self, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            probe.acked = True
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.origin, [{"t": "ack", "seq": relay.origin_seq}])

    def _apply_alive(self, msg: Message, now: float) -> None:
        node, inc = str(msg["node"]), int(msg["inc"])
        addr, report = _addr(msg["addr"]), dict(msg.get("report") or {})
        if self.leaving and node == self.name:
            return
        member = self.members.get(node)
        new = member is None
        if member is None:
            member = Member(node, addr, inc, DEAD, report, now, now)
            self.members[node] = member
            self._live_cache.clear()
            # a random place in the probe order keeps the detection bound low (memberlist)
            self._probe_order.insert(self.rng.randint(self._probe_index, len(self._probe_order)), node)
        if node == self.name:
            if inc < member.incarnation or (inc == member.incarnation and report == member.report):
                return
            self._refute(inc)  # someone announced us with other data: our own word must win
            return
        if inc <= member.incarnation and not new:
            return
        self._suspicions.pop(node, None)
        previous = member.state if not new else DEAD
        report_changed = new or report != member.report
        member.incarnation, member.addr = inc, addr
        if report_changed:
            member.report, member.report_at = report, now
        self._broadcasts.queue(node, {"t": "alive", "node": node, "inc": inc, "addr": list(addr),
                                      "report": report})
        if member.state != ALIVE or new:
            self._set_state(member, ALIVE, now)
            self._events.append(MemberEvent(node, ALIVE, "none" if new else previous, inc, report_changed))
        elif report_changed:
            self._events.append(MemberEvent(node, ALIVE, ALIVE, inc, True))

    def _apply_suspect(self, msg: Message, now: float) -> None:
        node, inc, accuser = str(msg["node"]), int(msg["inc"]), str(msg["from"])
        member = self.members.get(node)
        if member is None or inc < member.incarnation:
            return
        suspicion = self._suspicions.get(node)
        if suspicion is not None:
            if suspicion.confirm(accuser, now):
                self._broadcasts.queue(node, dict(msg))
            return
        if member.state != ALIVE:
            return
        if node == self.name:
            self._refute(inc)
            return
        self._broadcasts.queue(node, dict(msg))
        member.incarnation = inc
        self._set_state(member, SUSPECT, now)
        self._events.append(MemberEvent(node, SUSPECT, ALIVE, inc, False))
        # probe it next: our own probe confirms a real failure quickly, and carries the accusation
        # to a live member, which then answers us directly (Lifeguard's buddy system)
        self._probe_soon.append(node)
        n = self.live_count()
        # k confirmations bring the timeout to its minimum; too few members to confirm: no wait for them
        wanted = int(self.config.suspicion_mult) - 2
        if n - 2 < wanted:
            wanted = 0
        low = suspicion_min_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        self._suspicions[node] = Suspicion(accuser, wanted, low, low * self.config.suspicion_max_mult, now)

    def _apply_dead(self, msg: Message, now: float) -> None:
        node, inc, accuser = str(msg["node"]), int(msg["inc"]), str(msg["from"])
        member = self.members.get(node)
        if member is None or inc < member.incarnation:
            return
        self._suspicions.pop(node, None)
        if member.state in (DEAD, LEFT):
            return
        if node == self.name:
            if not self.leaving:
                self._refute(inc)
            return
        self._broadcasts.queue(node, dict(msg))
        previous = member.state
        member.incarnation = inc
        self._set_state(member, LEFT if accuser == node else DEAD, now)
        self._events.append(MemberEvent(node, member.state, previous, inc, False))

    def _refute(self, accused: int) -> None:
        me = self.me
        me.incarnation = max(me.incarnation, accused) + 1
        self.awareness.apply(1)  # being accused hints that we are the slow one
        self.counters.add("refutes")
        self._broadcasts.queue(self.name, self._alive_msg(me))

    def _set_state(self, member: Member, state: str, now: float) -> None:
        member.state, member.state_since = state, now
        self._live_cache.clear()

    def _announce(self, now: float) -> None:
        me = self.me
        me.report, me.report_at = dict(self._latest_report), now
        me.incarnation += 1
        self._report_dirty = False
        self._last_announce = now
        self._broadcasts.queue(self.name, self._alive_msg(me))

    def _alive_msg(self, member: Member) -> Message:
        return {"t": "alive", "node": member.name, "inc": member.incarnation, "addr": list(member.addr),
                "report": member.report}

    def _dead_msg(self, member: Member, accuser: str) -> Message:
        return {"t": "dead", "node": member.name, "inc": member.incarnation, "from": accuser}

    # ---- sending -----------------------------------------------------------------------------

    def _send(self, addr: Addr, messages: list[Message]) -> None:
        """Queue a packet, filled up with piggy-backed broadcasts."""
        used = sum(wire_size(m) for m in messages)
        limit = retransmit_limit(self.config.retransmit_mult, self.live_count())
        extra = self._broadcasts.take(self.config.packet_budget - used, limit)
        self._outgoing.append((addr, messages + extra))

    def _gossip(self) -> None:
        candidates = self._live_others()
        limit = retransmit_limit(self.config.retransmit_mult, self.live_count())
        for name in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            msgs = self._broadcasts.take(self.config.packet_budget, limit, fresh_packet=True)
            if not msgs:
                return
            self._outgoing.append((self.members[name].addr, msgs))
            self.counters.add("gossip_packets")

    def _live_others(self, alive_only: bool = False) -> list[str]:
        """Other members alive (and suspect unless ``alive_only``); cached until a state changes."""
        cached = self._live_cache.get(alive_only)
        if cached is None:
            ok = (ALIVE,) if alive_only else (ALIVE, SUSPECT)
            cached = [n for n, m in self.members.items() if n != self.name and m.state in ok]
            self._live_cache[alive_only] = cached
        return cached

    def _push_pull_interval(self) -> float:
        # memberlist's scaling: past 32 members, push-pull slows down with log2(n) to bound the traffic
        n = self.live_count()
        scale = 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1
        return self.config.push_pull_interval * scale
