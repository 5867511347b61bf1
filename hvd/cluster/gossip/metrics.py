"""Gossip figures for /metrics, read from the running GossipService when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from hvd.cluster.gossip.core import STATES
from hvd.cluster.gossip.service import GossipService

GAUGES = {"incarnation": "This host's incarnation number", "health_score": "Lifeguard awareness score (0 = healthy)"}


class GossipCollector(Collector):
    """Member states (gauges) and protocol counters of the service given to :func:`expose`."""

    def __init__(self) -> None:
        self.service: GossipService | None = None

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        if svc is None:
            return
        members = svc.members()
        by_state = GaugeMetricFamily("hvd_gossip_members", "Members by state as this host sees them", labels=["state"])
        for state in STATES:
            by_state.add_metric([state], sum(1 for m in members if m.state == state))
        yield by_state
        one_hot = GaugeMetricFamily("hvd_gossip_member_state", "1 for each member's current state",
                                    labels=["member", "state"])
        age = GaugeMetricFamily("hvd_gossip_report_age_seconds", "Age of each member's last report",
                                labels=["member"])
        for m in members:
            for state in STATES:
                one_hot.add_metric([m.name, state], 1.0 if m.state == state else 0.0)
            age.add_metric([m.name], m.report_age)
        yield one_hot
        yield age
        counters = svc.counters()
        refused = CounterMetricFamily("hvd_gossip_packets_refused", "Gossip packets refused", labels=["reason"])
        for reason in ("forged", "stale", "replayed", "malformed"):
            refused.add_metric([reason], counters.get(f"refused_{reason}", 0))
        yield refused
        events = CounterMetricFamily("hvd_gossip_events", "Gossip protocol events", labels=["event"])
        for key, value in sorted(counters.items()):
            if key in GAUGES or key.startswith("refused_"):
                continue
            events.add_metric([key.removeprefix("core_")], value)
        yield events
        for key, doc in GAUGES.items():
            yield GaugeMetricFamily(f"hvd_gossip_{key}", doc, value=counters.get(key, 0))


COLLECTOR = GossipCollector()
_registered = False


def expose(service: GossipService | None) -> None:
    """Make ``service`` the one /metrics reports on (None: stop reporting)."""
    global _registered
    if not _registered:
        REGISTRY.register(COLLECTOR)
        _registered = True
    COLLECTOR.service = service
