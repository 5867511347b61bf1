"""select(): filter, weigh, rank — pure and fast; the trace says why each host was dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hvd.errors import NoValidHost
from hvd.scheduler.filters import FILTERS, compute_filter
from hvd.scheduler.model import HostState, RequestSpec


@dataclass(frozen=True)
class Weights:
    """Weigher multipliers (positive spreads, negative stacks), as Nova's *_weight_multiplier."""

    ram: float = 1.0
    disk: float = 0.0
    vcpu: float = 0.0
    instance_count: float = 0.0
    soft_affinity: float = 2.0  # above the resource weighers: the group preference decides first


@dataclass
class Selection:
    ranked: list[tuple[HostState, float]]
    rejected: dict[str, str] = field(default_factory=dict)  # host -> "Filter: reason"

    def explain(self) -> str:
        return "; ".join(f"{h}: {why}" for h, why in sorted(self.rejected.items())) or "no hosts known"


def _normalise(values: list[float]) -> list[float]:
    """Nova's normaliser: value / max (all zero stays zero); log example 7466→1.0, 3434→0.4599."""
    top = max(values, default=0.0)
    lo = min(values, default=0.0)
    if top <= 0:
        return [0.0 for _ in values]
    if lo < 0:
        span = top - lo
        return [(v - lo) / span for v in values]
    return [v / top for v in values]


def select(
    hosts: Sequence[HostState], req: RequestSpec, filter_names: Sequence[str], weights: Weights,
    limit: int = 0, start: int = 0,
) -> Selection:
    """Rank the hosts that pass every filter (best first). Unknown filter names raise KeyError.

    With ``limit``, hosts are evaluated from index ``start`` on (wrapping around) and evaluation
    stops once ``limit`` hosts passed; an empty ranking therefore always comes from evaluating
    every host, so its trace names every host's reason.
    """
    chosen = [FILTERS[name] for name in filter_names]
    if compute_filter not in chosen:
        chosen.append(compute_filter)  # mandatory, as in the seed
    names = {fn: name for name, fn in FILTERS.items()}
    survivors: list[HostState] = []
    rejected: dict[str, str] = {}
    count = len(hosts)
    order = (hosts[(start + i) % count] for i in range(count)) if start % max(count, 1) else iter(hosts)
    for host in order:
        if limit and len(survivors) >= limit:
            break
        if req.force_host and host.name != req.force_host:
            rejected[host.name] = "not the forced host"
            continue
        if host.name in req.ignore_hosts:
            rejected[host.name] = "excluded by the operation (e.g. migration source)"
            continue
        for fn in chosen:
            reason = fn(host, req)
            if reason is not None:
                rejected[host.name] = f"{names[fn]}: {reason}"
                break
        else:
            survivors.append(host)
    components = [
        (weights.ram, _normalise([float(h.free_memory_mb) for h in survivors])),
        (weights.disk, _normalise([float(h.free_disk_gb) for h in survivors])),
        (weights.vcpu, _normalise([float(h.free_vcpus) for h in survivors])),
        (weights.instance_count, _normalise([float(h.instance_count) for h in survivors])),
    ]
    if req.group_policy in ("soft-affinity", "soft-anti-affinity"):
        # Nova's ServerGroupSoft(Anti)AffinityWeigher: a preference, never a refusal
        with_group = [1.0 if h.name in req.group_hosts else 0.0 for h in survivors]
        if req.group_policy == "soft-anti-affinity":
            with_group = [1.0 - v for v in with_group]
        components.append((weights.soft_affinity, with_group))
    scored = [
        (host, sum(mult * values[i] for mult, values in components if mult)) for i, host in enumerate(survivors)
    ]
    scored.sort(key=lambda item: (-item[1], item[0].name))
    return Selection(ranked=scored, rejected=rejected)


def select_or_raise(
    hosts: Sequence[HostState], req: RequestSpec, filter_names: Sequence[str], weights: Weights
) -> Selection:
    selection = select(hosts, req, filter_names, weights)
    if not selection.ranked:
        raise NoValidHost(f"No valid host was found. {selection.explain()}", rejected=selection.rejected)
    return selection
