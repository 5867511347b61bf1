"""The host network adapter the compute layer talks to: observe, plan, apply.

    net = HostNetwork(host_netns=None, dhcp_dir="/var/lib/hvd/dhcp")
    applied = await net.converge(desired)      # observe + plan_host + apply

Blocking netlink work runs in worker threads; nft, sysctl and dnsmasq are async
subprocesses. `apply` runs steps in plan order and raises at the first failure.
`converge_units` / `apply_isolated` run a labelled plan (`plan_units`) unit by unit: a failed
step stops the later steps of its unit only (one network's dnsmasq cannot hold back another
network or the security-group ruleset) and is reported; the next converge re-plans and retries
it (plans are idempotent, so a retry continues where this one stopped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from hvd.net import nft
from hvd.net import steps as s
from hvd.net.dhcp import DnsmasqManager
from hvd.net.links import LinkOps
from hvd.net.model import DHCP_NS_PREFIX, ROUTER_NS_PREFIX, HostNetworkState
from hvd.net.plan import Planned, desired_layout, plan_host, plan_orphans, plan_units
from hvd.net.router import read_forwarding, set_forwarding
from hvd.net.state import ObservedDevices

log = logging.getLogger(__name__)


@dataclass
class ApplyReport:
    """What one run of a labelled plan did: steps applied, steps skipped because an earlier
    step of their unit failed, and the failed units with the error that stopped each."""

    applied: list[s.Step] = field(default_factory=list)
    skipped: list[s.Step] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)


async def apply_isolated(
    planned: Sequence[Planned], apply_step: Callable[[s.Step], Awaitable[None]], report: ApplyReport | None = None
) -> ApplyReport:
    """Apply `planned` in order; a failing step marks its unit failed and skips that unit's
    later steps, every other unit goes on. Pass `report` to continue a run (its failed units
    stay failed)."""
    report = report if report is not None else ApplyReport()
    for unit, step in planned:
        if unit in report.failed:
            report.skipped.append(step)
            continue
        try:
            await apply_step(step)
        except Exception as exc:  # any failure of one unit's step; cancellation still propagates
            report.failed[unit] = exc
            log.error("network unit %s: %s failed: %s (its later steps wait for the next converge)",
                      unit, type(step).__name__, exc)
        else:
            report.applied.append(step)
    return report


_NETLINK_STEPS = (
    s.CreateNamespace,
    s.DeleteNamespace,
    s.CreateBridge,
    s.SetBridgeNetfilter,
    s.CreateVxlan,
    s.CreateVlan,
    s.CreateVeth,
    s.SetMaster,
    s.SetMtu,
    s.SetUp,
    s.DeleteLink,
    s.AddFdb,
    s.DeleteFdb,
    s.AddAddress,
    s.DeleteAddress,
    s.AddRoute,
    s.DeleteRoute,
)


class HostNetwork:
    """Host-side networking of one hypervisor host.

    `host_netns` is the namespace holding the bridges (None: this process's namespace, as
    in production; lab tests use a namespace per simulated host). `netns_prefix` and
    `dhcp_dir` must match the `HostNetworkState` passed in.
    """

    def __init__(
        self, host_netns: str | None = None, *, dhcp_dir: str = "/var/lib/hvd/dhcp", netns_prefix: str = ""
    ) -> None:
        self.host_netns = host_netns
        self.netns_prefix = netns_prefix
        self.links = LinkOps(host_netns)
        self.dnsmasq = DnsmasqManager(dhcp_dir)

    def state(self, desired: HostNetworkState) -> HostNetworkState:
        """`desired` with this host's namespace prefix and DHCP directory filled in."""
        return replace(desired, netns_prefix=self.netns_prefix, dhcp_dir=self.dnsmasq.dhcp_dir)

    async def observe(self, desired: HostNetworkState | None = None) -> ObservedDevices:
        """What exists: our prefixed devices, namespaces, dnsmasq instances and rulesets,
        plus the NICs/VM taps `desired` names (so they can be plugged into bridges)."""
        extra: set[str] = set()
        if desired is not None:
            layout = desired_layout(self.state(desired))
            extra = set(layout.nics) | set(layout.taps) | set(layout.segments)
        links, fdb = await asyncio.to_thread(self.links.observe_links, extra)
        prefixes = (self.netns_prefix + DHCP_NS_PREFIX, self.netns_prefix + ROUTER_NS_PREFIX)
        namespaces = await asyncio.to_thread(self.links.observe_namespaces, prefixes)
        for name, ns in list(namespaces.items()):
            forwarding = await read_forwarding(name)
            tags = await nft.observe_tags(name, nft.NAT_TABLES)
            namespaces[name] = replace(ns, ip_forward=forwarding, nft_tags=tags)
        return ObservedDevices(
            links=links,
            fdb=fdb,
            namespaces=namespaces,
            dhcp=self.dnsmasq.observe_all(),
            nft_tags=await nft.observe_tags(self.host_netns, nft.SG_TABLES),
        )

    async def apply(self, steps: Sequence[s.Step]) -> None:
        """Apply `steps` in order."""
        for step in steps:
            await self.apply_step(step)

    async def apply_step(self, step: s.Step) -> None:
        if isinstance(step, _NETLINK_STEPS):
            await asyncio.to_thread(self.links.apply, step)
        elif isinstance(step, s.SetForwarding):
            await set_forwarding(step.netns, step.enabled)
        elif isinstance(step, s.ApplyNftRuleset):
            await nft.apply_ruleset(self._ns(step.netns), step.tables, step.ruleset)
        elif isinstance(step, s.DeleteNftTables):
            await nft.delete_tables(self._ns(step.netns), step.tables)
        elif isinstance(step, s.WriteDhcpHosts):
            await asyncio.to_thread(self.dnsmasq.write_hosts, step.network_id, step.content)
        elif isinstance(step, s.StartDnsmasq):
            await self.dnsmasq.start(step.network_id, step.netns, step.argv)
        elif isinstance(step, s.ReloadDnsmasq):
            self.dnsmasq.reload(step.pid)
        elif isinstance(step, s.StopDnsmasq):
            await self.dnsmasq.stop(step.network_id, step.pid, purge=step.purge)
        else:  # pragma: no cover - the Step union is closed
            raise TypeError(f"unknown step {step!r}")

    def _ns(self, netns: str | None) -> str | None:
        return self.host_netns if netns is None else netns

    async def converge(self, desired: HostNetworkState) -> list[s.Step]:
        """Make the host match `desired`; returns the steps that were applied."""
        state = self.state(desired)
        planned = plan_host(state, await self.observe(state))
        await self.apply(planned)
        return planned

    async def apply_planned(self, planned: Sequence[Planned], report: ApplyReport | None = None) -> ApplyReport:
        """Apply a labelled plan unit by unit (`apply_isolated`)."""
        return await apply_isolated(planned, self.apply_step, report)

    async def converge_units(self, desired: HostNetworkState) -> ApplyReport:
        """Like `converge`, but one unit's failure does not stop the others (see the report)."""
        state = self.state(desired)
        return await self.apply_planned(plan_units(state, await self.observe(state)))

    async def remove_orphans(
        self, desired: HostNetworkState, owned: Callable[[str], bool] = lambda name: True
    ) -> list[s.Step]:
        """Delete prefixed objects (VM taps included) that `desired` does not account for
        and `owned(name)` accepts."""
        state = self.state(desired)
        planned = plan_orphans(state, await self.observe(state), owned)
        await self.apply(planned)
        return planned

    async def supervise_dhcp(self, desired: HostNetworkState) -> list[str]:
        """Restart any dnsmasq of `desired` that died; returns the network ids restarted."""
        layout = desired_layout(self.state(desired))
        expected = {nid: (d.netns, d.argv) for nid, d in layout.dhcp.items()}
        return await self.dnsmasq.restart_dead(expected)
