"""This host's networking, driven by the catalog: the service compute and the API call.

`NetworkService` reads the desired state of THIS host from the catalog (`hvd.net.desired`),
plans it against what exists (`hvd.net.plan`) and applies the steps through a host adapter
(`HostNetwork`, or `FakeHostNetwork` for tests). Converges are serialised by one lock and
coalesced: callers that arrive while one runs are served by the next single run. At start-up
it converges and removes orphans (crash repair); a periodic loop re-converges and restarts
dead dnsmasq processes.

Each converge runs per unit (`plan_units`): a network whose step fails (dnsmasq refusing an
option, a missing kernel feature) stops only its own later steps; other networks, routers and
the security-group ruleset still converge. Failed units are logged, counted in
`hvd_net_unit_failures_total` / `hvd_net_failed_units`, kept in `failed` and retried by the
next converge; a caller that needs particular networks (plugging an instance) gets the error.

Ownership: with `claim_all_devices` (production) every prefixed device in the host namespace
is ours. Without it (several daemons sharing one kernel, as in tests) only names this daemon
recorded before creating them count, so nobody else's bridges or taps are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from hvd.catalog.cmd_network import HostSetVtep, PortDelete, PortUpdate
from hvd.catalog.service import Catalog
from hvd.compute.metadata_content import network_data_nics
from hvd.config import Config
from hvd.drivers.base import Nic
from hvd.faults import checkpoint
from hvd.net import steps as s
from hvd.net.apply import ApplyReport, apply_isolated
from hvd.net.desired import host_state, instance_ports
from hvd.net.fake import FakeHost
from hvd.net.metadata import MetadataServer, metadata_endpoints
from hvd.net.model import HostNetworkState, LocalVtep, bridge_name, dhcp_namespace, router_namespace, tap_name
from hvd.net.plan import (
    SECURITY_UNIT,
    Planned,
    desired_layout,
    network_unit,
    plan_orphans,
    plan_units,
    step_unit,
)
from hvd.net.proc import NetError, in_netns, run
from hvd.net.state import ObservedDevices
from hvd.storage.config_drive import NetworkDataNic

log = logging.getLogger(__name__)

Owned = Callable[[str], bool]
UNIT_FAILURES = Counter("hvd_net_unit_failures_total", "Network units whose converge failed, by kind "
                        "(network, router, security, stale)", ["kind"])
FAILED_UNITS = Gauge("hvd_net_failed_units", "Network units left failed by the last converge on this host")
CHANGE_DEBOUNCE_S = 0.2  # a burst of networking commands (a server's ports, a router) converges once
SG_TABLES_NAME = "nft:hvd_sg"  # ownership record entry for the host's security-group tables


class HostAdapter(Protocol):
    """What the service needs from a host: `HostNetwork` or `FakeHostNetwork`."""

    def state(self, desired: HostNetworkState) -> HostNetworkState: ...

    async def observe(self, desired: HostNetworkState | None = None) -> ObservedDevices: ...

    async def apply(self, steps: Sequence[s.Step]) -> None: ...

    async def apply_planned(self, planned: Sequence[Planned], report: ApplyReport | None = None) -> ApplyReport: ...

    async def supervise_dhcp(self, desired: HostNetworkState) -> list[str]: ...


class FakeHostNetwork:
    """`FakeHost` behind the adapter interface (fake compute driver, API tests)."""

    def __init__(self, netns_prefix: str = "", dhcp_dir: str = "/nonexistent") -> None:
        self.host = FakeHost()
        self.netns_prefix = netns_prefix
        self.dhcp_dir = dhcp_dir

    def state(self, desired: HostNetworkState) -> HostNetworkState:
        return replace(desired, netns_prefix=self.netns_prefix, dhcp_dir=self.dhcp_dir)

    async def observe(self, desired: HostNetworkState | None = None) -> ObservedDevices:
        return self.host.observed()

    async def apply(self, steps: Sequence[s.Step]) -> None:
        self.host.apply(list(steps))

    async def apply_planned(self, planned: Sequence[Planned], report: ApplyReport | None = None) -> ApplyReport:
        async def one(step: s.Step) -> None:
            self.host.apply([step])

        return await apply_isolated(planned, one, report)

    async def supervise_dhcp(self, desired: HostNetworkState) -> list[str]:
        return []


class OwnedNames:
    """Names (devices, namespaces, network ids) this daemon created, kept in a JSON file that
    is written before the devices are made, so a crash never leaves an unrecorded one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.names: set[str] = set(json.loads(path.read_text()))
        except (OSError, ValueError):
            self.names = set()

    def __call__(self, name: str) -> bool:
        return name in self.names

    def add(self, names: set[str]) -> None:
        if names <= self.names:
            return
        self.names |= names
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.names)))
        os.replace(tmp, self.path)


def desired_names(state: HostNetworkState) -> set[str]:
    """Every name `state` makes or plugs on the host (for the ownership record)."""
    layout = desired_layout(state)
    names = set(layout.bridges) | set(layout.segments) | set(layout.nics) | set(layout.taps) | set(layout.dhcp)
    if layout.security is not None:
        names.add(SG_TABLES_NAME)
    for ns in layout.namespaces.values():
        names.add(ns.name)
        names |= {v.tap for v in ns.veths}
    return names


class NetworkService:
    """The network hooks of compute (`plug_instance`, `nics_of`, ...) and of the API (`changed`)."""

    def __init__(self, config: Config, catalog: Catalog, adapter: HostAdapter, owned: OwnedNames | None,
                 metadata: MetadataServer | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.adapter = adapter
        self.metadata = metadata  # serves 169.254.169.254 in this host's qdhcp- namespaces (linux backend)
        self.host = config.host_name
        self.owned = owned
        self.local_vtep: LocalVtep | None = None
        self._lock = asyncio.Lock()
        self._requested = 0
        self._done = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.converges = 0  # how many plans were applied (tests, metrics)
        self.failed: dict[str, Exception] = {}  # unit -> the error that stopped it in the last converge

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Converge, remove orphans left by a crash, then start the periodic loop."""
        net = self.config.network
        if net.local_ip:
            device = net.vxlan_underlay or await _device_of(net.host_netns or None, net.local_ip)
            self.local_vtep = LocalVtep(net.local_ip, device)
            await self.catalog.propose(HostSetVtep(host=self.host, ip=net.local_ip))
        await self.sync()
        desired = await self.desired()
        observed = await self._observe(desired)
        orphans = plan_orphans(desired, observed, self.owned or (lambda name: True))
        if orphans:
            log.warning("removing %d orphaned network objects: %s", len(orphans), orphans)
            # each orphan on its own: one that cannot be removed (logged) must not stop start-up
            await self.adapter.apply_planned([(step_unit(step, {}, desired.netns_prefix), step) for step in orphans])
        self._loop_task = asyncio.create_task(self._periodic())
        self._watch_task = asyncio.create_task(self._follow_catalog())

    async def stop(self) -> None:
        """Stop the loops; devices and dnsmasq stay (a restart of hvd must not cut networking).
        The metadata listeners close: they are this process's sockets."""
        self.catalog.state.on_network_change = None
        for task in (self._loop_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.metadata is not None:
            async with self._lock:
                await self.metadata.close()

    async def _follow_catalog(self) -> None:
        """Converge as soon as a networking command is applied here, whichever host it came from
        (every replica applies every command); bursts of changes make one convergence."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def poke() -> None:  # runs on the catalog's database thread
            loop.call_soon_threadsafe(wake.set)

        self.catalog.state.on_network_change = poke
        while True:
            await wake.wait()
            await asyncio.sleep(CHANGE_DEBOUNCE_S)
            wake.clear()
            await self.changed()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.network.converge_interval_s)
            try:
                await self.sync()
                restarted = await self.adapter.supervise_dhcp(await self.desired())
                if restarted:
                    log.warning("restarted dead dnsmasq for networks %s", restarted)
            except Exception:  # the loop must survive a bad round; the next one retries
                log.exception("periodic network converge failed")

    # --- converge ---------------------------------------------------------------------------

    async def desired(self) -> HostNetworkState:
        state = await self.catalog.read(host_state, self.host, self.config.network.physical_interface_mappings,
                                        self.local_vtep)
        return self.adapter.state(replace(state, dnsmasq_user=self.config.network.dnsmasq_user or None,
                                          metadata=self.config.network.metadata_enabled))

    async def _observe(self, desired: HostNetworkState) -> ObservedDevices:
        observed = await self.adapter.observe(desired)
        if self.owned is None:
            return observed
        restricted = observed.restricted(self.owned)
        # the host's security-group tables have fixed names: ours only once we have loaded them
        return restricted if self.owned(SG_TABLES_NAME) else replace(restricted, nft_tags={})

    async def sync(self, require: Collection[str] = ()) -> None:
        """Make the host match the catalog; concurrent callers share one converge. Raises if the
        catalog or the host cannot be read, or with the error of a failed unit in `require`
        (`network:<id>`, `router:<id>`, `security`); other failed units are only reported."""
        self._requested += 1
        wanted = self._requested
        async with self._lock:
            if self._done < wanted:
                target = self._requested
                await self._converge_once()
                self._done = target
        for unit in require:
            if unit in self.failed:
                raise self.failed[unit]

    async def _converge_once(self) -> None:
        desired = await self.desired()
        if self.owned is not None:
            await asyncio.to_thread(self.owned.add, desired_names(desired))
        planned = plan_units(desired, await self._observe(desired))
        serving = metadata_endpoints(desired, desired_layout(desired))
        if self.metadata is not None:
            await self.metadata.sync_before_apply(serving)  # an open socket would keep a deleted namespace alive
        report = ApplyReport()
        for network_id, reason in desired.unrealisable:  # failed before any step: nothing to apply
            report.failed[network_unit(network_id)] = NetError(
                f"network {network_id} cannot be realised on host {self.host}: {reason}")
        if planned:
            half = len(planned) // 2
            report = await self.adapter.apply_planned(planned[:half], report)
            checkpoint("net.converge.partial")
            report = await self.adapter.apply_planned(planned[half:], report)
            self.converges += 1
        if self.metadata is not None:
            await self.metadata.sync_after_apply(serving)
        self._record(report, len(planned))

    def _record(self, report: ApplyReport, planned: int) -> None:
        recovered = set(self.failed) - set(report.failed)
        if recovered:
            log.info("network units converged again: %s", ", ".join(sorted(recovered)))
        for unit in report.failed:
            UNIT_FAILURES.labels(unit.split(":", 1)[0]).inc()
        self.failed = dict(report.failed)
        FAILED_UNITS.set(len(self.failed))
        if report.failed:
            log.warning("network converge: %d of %d steps applied; failed units (retried next converge): %s",
                        len(report.applied), planned, ", ".join(sorted(report.failed)))
        elif planned:
            log.info("network converged: %d steps", planned)

    async def changed(self) -> None:
        """The catalog changed in a way that may concern this host: converge now (errors are
        logged, not raised: the change is committed and the periodic loop retries)."""
        try:
            await self.sync()
        except Exception:  # the API answer must not depend on a host hiccup
            log.exception("network converge after a change failed (will retry)")

    # --- compute hooks ----------------------------------------------------------------------

    async def _ports(self, instance_id: str) -> list[dict[str, Any]]:
        return await self.catalog.read(instance_ports, instance_id)

    async def plug_instance(self, inst: dict[str, Any]) -> None:
        """Bind the instance's ports to this host and converge, so its bridges exist before the
        hypervisor attaches the taps. Raises if the host cannot be converged."""
        for port in await self._ports(inst["id"]):
            if port["host"] != self.host:
                await self.catalog.propose(PortUpdate(id=port["id"], host=self.host))
        checkpoint("net.plugged")
        ports = await self._ports(inst["id"])
        await self.sync(require={SECURITY_UNIT, *(network_unit(p["network_id"]) for p in ports)})

    async def unplug_instance(self, inst: dict[str, Any]) -> None:
        """Unbind the instance's ports from this host (they stay in the catalog); idempotent."""
        for port in await self._ports(inst["id"]):
            if port["host"] == self.host:
                await self.catalog.propose(PortUpdate(id=port["id"], host=""))
        await self.changed()

    async def release_instance(self, inst: dict[str, Any]) -> None:
        """The instance is deleted: its own ports go, ports the user passed in are unbound."""
        for port in await self._ports(inst["id"]):
            if port["auto_delete"]:
                with contextlib.suppress(Exception):  # already gone is fine
                    await self.catalog.propose(PortDelete(id=port["id"], internal=True))
            else:
                await self.catalog.propose(PortUpdate(id=port["id"], device_id="", device_owner="", host=""))
        await self.changed()

    async def nics_of(self, instance_id: str) -> list[Nic]:
        """The instance's NICs (attach order): MAC, bridge `brq...`, tap `tap...`, MTU."""
        return [Nic(mac=p["mac_address"], bridge=bridge_name(p["network_id"]), tap=tap_name(p["id"]), mtu=p["mtu"])
                for p in await self._ports(instance_id)]

    async def network_data(self, instance_id: str) -> list[NetworkDataNic]:
        """network_data.json entries: DHCP where the subnet serves it, else the static address."""
        return network_data_nics(await self._ports(instance_id))

    async def addresses_of(self, instance_id: str) -> dict[str, list[dict[str, Any]]]:
        """`{network name: [{addr, version, mac, type: fixed|floating}]}` for the server view."""
        out: dict[str, list[dict[str, Any]]] = {}
        for p in await self._ports(instance_id):
            entries = out.setdefault(p["network_name"] or p["network_id"], [])
            for fixed in p["fixed_ips"]:
                entries.append({"addr": fixed["ip"], "version": fixed["ip_version"], "mac": p["mac_address"],
                                "type": "fixed"})
            for fip in p["floating_ips"]:
                entries.append({"addr": fip, "version": 4, "mac": p["mac_address"], "type": "floating"})
        return out

    def namespaces_of(self, network_id: str = "", router_id: str = "") -> str:
        """The qdhcp-/qrouter- namespace name of a network or router on this host."""
        prefix = self.config.network.netns_prefix
        return dhcp_namespace(network_id, prefix) if network_id else router_namespace(router_id, prefix)


async def _device_of(netns: str | None, ip: str) -> str:
    """The NIC holding `ip` (the VTEP underlay when `vxlan_underlay` is not configured)."""
    out = await run(in_netns(netns, ["ip", "-o", "addr", "show", "to", ip]), check=False)
    fields = out.stdout.split()
    return fields[1] if len(fields) > 1 else ""
