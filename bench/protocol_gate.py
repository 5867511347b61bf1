"""What the rolling-upgrade gate (hvd/cluster/protocol_gate.py) costs a proposal: ``python bench/protocol_gate.py``.

Every proposal asks the gate whether each Raft member can apply it. Prints the time of that check
with 3 Raft members among 10 and 1,000 gossip hosts, when no report changed since the previous
proposal and when one did, next to decoding a small command (what every replica pays per write)
as the yardstick. Not a test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hvd.catalog import all_commands  # noqa: F401 - registers the command types decode needs
from hvd.catalog.cmd_resources import FlavorCreate
from hvd.catalog.commands import decode, encode
from hvd.cluster.gossip.core import MemberEvent
from hvd.cluster.gossip.report import ResourceReport, parse_report
from hvd.cluster.gossip.service import MemberView
from hvd.cluster.protocol_gate import ProtocolGate

ROUNDS = 20_000


class Gossip:
    """GossipService's surface as the gate uses it: reports kept as dicts, parsed when read."""

    def __init__(self, hosts: int) -> None:
        self.raw = {f"h{i}": ResourceReport(hvd_version="0.2.0", protocol=2, node_id=f"h{i}").wire()
                    for i in range(hosts)}
        self.callbacks: list[Callable[[MemberEvent], None]] = []

    def members(self) -> list[MemberView]:
        return [MemberView(k, "alive", 1, parse_report(v), 0.0, ("127.0.0.1", 1)) for k, v in self.raw.items()]

    def report_of(self, name: str) -> ResourceReport | None:
        return parse_report(self.raw[name]) if name in self.raw else None

    def on_change(self, callback: Callable[[MemberEvent], None]) -> None:
        self.callbacks.append(callback)


def per_call_us(fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(ROUNDS):
        fn(i)
    return (time.perf_counter() - start) / ROUNDS * 1e6


def main() -> None:
    cmd = FlavorCreate(id="f", name="f", vcpus=1, ram_mb=64, disk_gb=1, created_at="2026-12-01T00:00:00Z")
    data = encode(cmd)
    print(f"decode of a small command (every replica, every write): {per_call_us(lambda _: decode(data)):.1f} us")
    for hosts in (10, 1000):
        gossip = Gossip(hosts)
        gate = ProtocolGate("h0", 2, lambda: {"h0", "h1", "h2"})
        gate.use_gossip(gossip)
        gate.refusal(cmd)  # the first read of every report
        quiet = per_call_us(lambda _, gate=gate: gate.refusal(cmd))

        def after_news(i: int, gossip: Gossip = gossip, gate: ProtocolGate = gate, hosts: int = hosts) -> None:
            gossip.callbacks[0](MemberEvent(f"h{i % hosts}", "alive", "alive", 2, True))
            gate.refusal(cmd)

        print(f"gate, {hosts} gossip hosts: {quiet:.1f} us a proposal; {per_call_us(after_news):.1f} us when a"
              " report changed since the last one")


if __name__ == "__main__":
    main()
