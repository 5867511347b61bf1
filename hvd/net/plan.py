"""Pure network plans: what to do so a host matches its desired state.

`plan_host(desired, existing)` returns small typed steps (`hvd.net.steps`). Applying them and
planning again yields no steps. Removing a network (or router) from `desired` yields the
steps deleting exactly its bridge, segment device, namespaces, dnsmasq and forwarding
entries. Anything in `existing` with our prefixes that `desired` lacks is removed, except VM
taps: the hypervisor owns those, and only `plan_orphans` proposes deleting them.

`plan_units` labels each step with the unit it belongs to (a network, a router, the host's
security-group ruleset, or one stale object), so an applier converges units independently:
a failed step stops only the later steps of its own unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hvd.net import steps as s
from hvd.net.dhcp import dhcp_paths, dnsmasq_argv, render_hosts
from hvd.net.layout import NamespaceLayout, VethLayout
from hvd.net.model import (
    BRIDGE_PREFIX,
    DEVICE_OWNER_DHCP,
    DHCP_DEV_PREFIX,
    DHCP_NS_PREFIX,
    METADATA_IP,
    ROUTER_GATEWAY_PREFIX,
    ROUTER_INTERFACE_PREFIX,
    ROUTER_NS_PREFIX,
    TAP_PREFIX,
    VXLAN_PREFIX,
    HostNetworkState,
    NetworkSpec,
    dhcp_device_name,
    dhcp_namespace,
    tap_name,
)
from hvd.net.nft import SG_TABLES, NftRuleset, render_security_ruleset
from hvd.net.router import router_layout
from hvd.net.state import FdbEntry, ObservedDevices, ObservedLink, ObservedNamespace

FLOOD_MAC = "00:00:00:00:00:00"
_NS_DEVICE_PREFIXES = (DHCP_DEV_PREFIX, ROUTER_INTERFACE_PREFIX, ROUTER_GATEWAY_PREFIX)


@dataclass(frozen=True)
class DhcpLayout:
    netns: str
    argv: tuple[str, ...]
    hosts: str
    metadata: bool = False  # the namespace serves METADATA_IP (hvd.net.metadata listens there)


@dataclass(frozen=True)
class HostLayout:
    """The desired state spelled out as devices, processes and rulesets."""

    bridges: Mapping[str, int] = field(default_factory=dict)
    segments: Mapping[str, s.CreateVxlan | s.CreateVlan] = field(default_factory=dict)
    segment_bridge: Mapping[str, str] = field(default_factory=dict)
    # Devices we bridge but never create or delete: physical NICs, VM taps.
    nics: Mapping[str, str] = field(default_factory=dict)
    taps: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    namespaces: Mapping[str, NamespaceLayout] = field(default_factory=dict)
    fdb: frozenset[FdbEntry] = frozenset()
    dhcp: Mapping[str, DhcpLayout] = field(default_factory=dict)
    security: NftRuleset | None = None
    # Device and namespace name -> the unit (`network:<id>`, `router:<id>`) it belongs to.
    units: Mapping[str, str] = field(default_factory=dict)


def _segment(net: NetworkSpec, state: HostNetworkState) -> s.CreateVxlan | s.CreateVlan | None:
    name = net.segment_device
    if net.type == "vxlan":
        assert name is not None and net.segmentation_id is not None
        if state.local_vtep is None:
            raise ValueError(f"vxlan network {net.id} needs the host's local_vtep")
        return s.CreateVxlan(name, net.segmentation_id, state.local_vtep.ip, state.local_vtep.device, net.mtu)
    if net.type == "vlan":
        assert name is not None and net.physical_nic is not None and net.segmentation_id is not None
        return s.CreateVlan(name, net.physical_nic, net.segmentation_id, net.mtu)
    return None


def _fdb(state: HostNetworkState) -> frozenset[FdbEntry]:
    """l2population: a flood entry per remote VTEP with ports on the network, one per MAC."""
    vtep_of = {v.host: v.ip for v in state.vteps if v.host != state.host}
    entries = set()
    for net in state.networks:
        if net.type != "vxlan":
            continue
        device = net.segment_device
        assert device is not None
        for port in state.ports:
            dst = vtep_of.get(port.host)
            if port.network_id != net.id or dst is None:
                continue
            entries.add(FdbEntry(device, FLOOD_MAC, dst))
            entries.add(FdbEntry(device, port.mac, dst))
    return frozenset(entries)


def desired_layout(state: HostNetworkState) -> HostLayout:
    """Spell out `state` as bridges, segment devices, namespaces, fdb, dnsmasq and rulesets."""
    bridges: dict[str, int] = {}
    segments: dict[str, s.CreateVxlan | s.CreateVlan] = {}
    segment_bridge: dict[str, str] = {}
    nics: dict[str, str] = {}
    units: dict[str, str] = {}
    for net in state.networks:
        bridges[net.bridge] = net.mtu
        units[net.bridge] = network_unit(net.id)
        seg = _segment(net, state)
        if seg is not None:
            segments[seg.name] = seg
            segment_bridge[seg.name] = net.bridge
            units[seg.name] = network_unit(net.id)
        elif net.type == "flat":
            assert net.physical_nic is not None
            nics[net.physical_nic] = net.bridge
            units[net.physical_nic] = network_unit(net.id)

    net_ids = {n.id for n in state.networks}
    local = [p for p in state.local_ports() if p.network_id in net_ids]
    compute = [p for p in local if p.is_compute]
    taps = {p.tap: (state.network(p.network_id).bridge, state.network(p.network_id).mtu) for p in compute}
    units.update({p.tap: network_unit(p.network_id) for p in compute})

    namespaces: dict[str, NamespaceLayout] = {}
    dhcp: dict[str, DhcpLayout] = {}
    for port in sorted(local, key=lambda p: p.id):
        if port.device_owner != DEVICE_OWNER_DHCP or port.network_id in dhcp:
            continue
        net = state.network(port.network_id)
        subnets = [sub for sub in state.subnets if sub.network_id == net.id]
        if not any(sub.dhcp_enabled for sub in subnets):
            continue
        netns = dhcp_namespace(net.id, state.netns_prefix)
        by_id = {sub.id: sub for sub in subnets}
        device = dhcp_device_name(port.id)
        addresses = {by_id[f.subnet_id].interface(f.ip) for f in port.fixed_ips if f.subnet_id in by_id}
        metadata_via = {f.subnet_id: f.ip for f in port.fixed_ips
                        if state.metadata and f.subnet_id in by_id and by_id[f.subnet_id].ip_version == 4}
        if metadata_via:
            addresses.add(f"{METADATA_IP}/32")
        veth = VethLayout(
            tap=tap_name(port.id),
            peer=device,
            netns=netns,
            bridge=net.bridge,
            mac=port.mac,
            mtu=net.mtu,
            addresses=frozenset(addresses),
        )
        namespaces[netns] = NamespaceLayout(name=netns, veths=(veth,))
        units.update({netns: network_unit(net.id), veth.tap: network_unit(net.id), veth.peer: network_unit(net.id)})
        argv = dnsmasq_argv(device, subnets, dhcp_paths(state.dhcp_dir, net.id), user=state.dnsmasq_user,
                            metadata_via=metadata_via)
        net_ports = [p for p in state.ports if p.network_id == net.id]
        dhcp[net.id] = DhcpLayout(netns, argv, render_hosts(net_ports, subnets, exclude=port.id), bool(metadata_via))

    for router in state.routers:
        layout = router_layout(router, state)
        namespaces[layout.name] = layout
        units[layout.name] = router_unit(router.id)
        units.update({name: router_unit(router.id) for v in layout.veths for name in (v.tap, v.peer)})

    members = [p for p in state.ports if p.is_compute]
    return HostLayout(
        bridges=bridges,
        segments=segments,
        segment_bridge=segment_bridge,
        nics=nics,
        taps=taps,
        namespaces=namespaces,
        fdb=_fdb(state),
        dhcp=dhcp,
        security=render_security_ruleset(compute, state.security_groups, members=members),
        units=units,
    )


def _ensure_member(name: str, bridge: str, mtu: int | None, obs: ObservedLink | None, out: list[s.Step]) -> None:
    if obs is None or obs.master != bridge:
        out.append(s.SetMaster(name, bridge))
    if mtu is not None and (obs is None or obs.mtu != mtu):
        out.append(s.SetMtu(name, mtu))
    if obs is None or not obs.up:
        out.append(s.SetUp(name))


def _segment_matches(want: s.CreateVxlan | s.CreateVlan, obs: ObservedLink) -> bool:
    if isinstance(want, s.CreateVxlan):
        return (
            obs.kind == "vxlan"
            and obs.vxlan_id == want.vni
            and obs.vxlan_local == want.local_ip
            and obs.vxlan_dev == want.underlay
            and not obs.vxlan_learning
        )
    return obs.kind == "vlan" and obs.vlan_id == want.vid


def _tags_match(ruleset: NftRuleset, tags: Mapping[str, str | None]) -> bool:
    return all(tags.get(table) == ruleset.tag for table in ruleset.tables)


def _plan_namespace(
    layout: NamespaceLayout,
    obs_ns: ObservedNamespace | None,
    links: Mapping[str, ObservedLink],
    deletes: list[s.Step],
    creates: list[s.Step],
) -> set[str]:
    """Steps for one qdhcp-/qrouter- namespace; returns the peers (re)created from scratch."""
    ns = layout.name
    ns_links = obs_ns.links if obs_ns is not None else {}
    if obs_ns is None:
        creates.append(s.CreateNamespace(ns))
    lo = ns_links.get("lo")
    if lo is None or not lo.up:
        creates.append(s.SetUp("lo", ns))
    wanted_peers = {v.peer for v in layout.veths}
    for name in sorted(ns_links):
        if name.startswith(_NS_DEVICE_PREFIXES) and name not in wanted_peers:
            deletes.append(s.DeleteLink(name, ns))
    fresh: set[str] = set()
    for veth in layout.veths:
        tap, peer = links.get(veth.tap), ns_links.get(veth.peer)
        intact = tap is not None and tap.kind == "veth" and peer is not None and peer.mac == veth.mac
        if not intact:
            if tap is not None:
                deletes.append(s.DeleteLink(veth.tap))
            if peer is not None:
                deletes.append(s.DeleteLink(veth.peer, ns))
            creates.append(s.CreateVeth(veth.tap, veth.peer, ns, veth.mtu, veth.mac))
            fresh.add(veth.peer)
            tap = peer = None
        _ensure_member(veth.tap, veth.bridge, veth.mtu, tap, creates)
        if peer is None or peer.mtu != veth.mtu:
            creates.append(s.SetMtu(veth.peer, veth.mtu, ns))
        if peer is None or not peer.up:
            creates.append(s.SetUp(veth.peer, ns))
        have = peer.addresses if peer is not None else frozenset()
        deletes.extend(s.DeleteAddress(ns, veth.peer, a) for a in sorted(have - veth.addresses))
        creates.extend(s.AddAddress(ns, veth.peer, a) for a in sorted(veth.addresses - have))
    have_routes = obs_ns.routes if obs_ns is not None else frozenset()
    key = lambda r: (r.dst, r.gateway)  # noqa: E731 - a sort key, nothing more
    deletes.extend(s.DeleteRoute(ns, r.dst, r.gateway) for r in sorted(have_routes - layout.routes, key=key))
    creates.extend(s.AddRoute(ns, r.dst, r.gateway) for r in sorted(layout.routes - have_routes, key=key))
    forwarding = obs_ns.ip_forward if obs_ns is not None else False
    if forwarding != layout.forwarding:
        creates.append(s.SetForwarding(ns, layout.forwarding))
    tags = obs_ns.nft_tags if obs_ns is not None else {}
    if layout.nft is not None and not _tags_match(layout.nft, tags):
        creates.append(s.ApplyNftRuleset(ns, layout.nft.tables, layout.nft.text, layout.nft.tag))
    elif layout.nft is None and any(t in tags for t in layout.nft_tables):
        deletes.append(s.DeleteNftTables(ns, tuple(t for t in layout.nft_tables if t in tags)))
    return fresh


def plan_layout(layout: HostLayout, existing: ObservedDevices, netns_prefix: str = "") -> list[s.Step]:
    """Diff a spelled-out layout against what exists; deletions come first."""
    deletes: list[s.Step] = []
    creates: list[s.Step] = []
    links = existing.links

    # dnsmasq first: it holds its interface, which the namespace steps may remove.
    for nid, dhcp_state in sorted(existing.dhcp.items()):
        if nid not in layout.dhcp:
            deletes.append(s.StopDnsmasq(nid, dhcp_state.pid))

    ns_prefixes = (netns_prefix + DHCP_NS_PREFIX, netns_prefix + ROUTER_NS_PREFIX)
    for name in sorted(existing.namespaces):
        if name.startswith(ns_prefixes) and name not in layout.namespaces:
            deletes.append(s.DeleteNamespace(name))

    recreated: set[str] = set()
    for name, obs in sorted(links.items()):
        want = layout.segments.get(name)
        if want is not None and not _segment_matches(want, obs):
            deletes.append(s.DeleteLink(name))
            recreated.add(name)
        elif want is None and (
            name.startswith(VXLAN_PREFIX) or (obs.kind == "vlan" and (obs.master or "").startswith(BRIDGE_PREFIX))
        ):
            deletes.append(s.DeleteLink(name))
    for name in sorted(links):
        if name.startswith(BRIDGE_PREFIX) and name not in layout.bridges:
            deletes.append(s.DeleteLink(name))

    for entry in sorted(existing.fdb, key=lambda e: (e.device, e.mac, e.dst)):
        if entry.device in layout.segments and entry.device not in recreated and entry not in layout.fdb:
            deletes.append(s.DeleteFdb(entry.device, entry.mac, entry.dst))

    if layout.security is None and any(t in existing.nft_tags for t in SG_TABLES):
        deletes.append(s.DeleteNftTables(None, tuple(t for t in SG_TABLES if t in existing.nft_tags)))

    for name, mtu in sorted(layout.bridges.items()):
        bridge = links.get(name)
        if bridge is None:
            creates.append(s.CreateBridge(name, mtu))
        else:
            if not bridge.bridge_nf_call:
                creates.append(s.SetBridgeNetfilter(name))
            if bridge.mtu != mtu:
                creates.append(s.SetMtu(name, mtu))
        if bridge is None or not bridge.up:
            creates.append(s.SetUp(name))

    for name, want in sorted(layout.segments.items()):
        seg_obs = None if name in recreated else links.get(name)
        if seg_obs is None:
            creates.append(want)
        _ensure_member(name, layout.segment_bridge[name], want.mtu, seg_obs, creates)
    for name, nic_bridge in sorted(layout.nics.items()):
        _ensure_member(name, nic_bridge, None, links.get(name), creates)
    for name, (tap_bridge, tap_mtu) in sorted(layout.taps.items()):
        if name in links:  # the hypervisor creates VM taps; we only plug them
            _ensure_member(name, tap_bridge, tap_mtu, links[name], creates)

    restart_dhcp: set[str] = set()
    for name, ns_layout in sorted(layout.namespaces.items()):
        fresh = _plan_namespace(ns_layout, existing.namespaces.get(name), links, deletes, creates)
        restart_dhcp |= {nid for nid, d in layout.dhcp.items() if d.netns == name and fresh}

    have_fdb = {e for e in existing.fdb if e.device not in recreated}
    key = lambda e: (e.device, e.mac, e.dst)  # noqa: E731 - a sort key, nothing more
    creates.extend(s.AddFdb(e.device, e.mac, e.dst) for e in sorted(layout.fdb - have_fdb, key=key))

    for nid, want_dhcp in sorted(layout.dhcp.items()):
        dhcp_obs = existing.dhcp.get(nid)
        pid = dhcp_obs.pid if dhcp_obs is not None else None
        if pid is not None and (dhcp_obs is None or dhcp_obs.argv != want_dhcp.argv or nid in restart_dhcp):
            deletes.append(s.StopDnsmasq(nid, pid, purge=False))
            pid = None
        hosts_changed = dhcp_obs is None or dhcp_obs.hosts != want_dhcp.hosts
        if hosts_changed:
            creates.append(s.WriteDhcpHosts(nid, want_dhcp.hosts))
        if pid is None:
            creates.append(s.StartDnsmasq(nid, want_dhcp.netns, want_dhcp.argv))
        elif hosts_changed:
            creates.append(s.ReloadDnsmasq(nid, pid))

    if layout.security is not None and not _tags_match(layout.security, existing.nft_tags):
        sec = layout.security
        creates.append(s.ApplyNftRuleset(None, sec.tables, sec.text, sec.tag))
    return deletes + creates


def plan_host(desired: HostNetworkState, existing: ObservedDevices) -> list[s.Step]:
    """Steps turning `existing` into `desired` (see the module docstring for the contract)."""
    return plan_layout(desired_layout(desired), existing, desired.netns_prefix)


SECURITY_UNIT = "security"
Planned = tuple[str, s.Step]


def network_unit(network_id: str) -> str:
    return f"network:{network_id}"


def router_unit(router_id: str) -> str:
    return f"router:{router_id}"


def plan_units(desired: HostNetworkState, existing: ObservedDevices) -> list[Planned]:
    """`plan_host`'s steps, in the same order, each labelled with its unit (`step_unit`)."""
    layout = desired_layout(desired)
    steps = plan_layout(layout, existing, desired.netns_prefix)
    return [(step_unit(step, layout.units, desired.netns_prefix), step) for step in steps]


def _name_unit(name: str, units: Mapping[str, str], netns_prefix: str) -> str:
    unit = units.get(name)
    if unit is not None:
        return unit
    # a namespace being removed still belongs with its network's (or router's) other steps
    for prefix, make in ((netns_prefix + DHCP_NS_PREFIX, network_unit), (netns_prefix + ROUTER_NS_PREFIX,
                                                                         router_unit)):
        if name.startswith(prefix):
            return make(name.removeprefix(prefix))
    return f"stale:{name}"


def step_unit(step: s.Step, units: Mapping[str, str], netns_prefix: str = "") -> str:
    """The unit `step` belongs to: `network:<id>` (bridge, segment, taps, DHCP namespace and
    dnsmasq), `router:<id>` (its namespace), `security` (the host's security-group tables)
    or `stale:<name>` (an object no unit wants any more, deleted on its own)."""
    if isinstance(step, s.WriteDhcpHosts | s.StartDnsmasq | s.ReloadDnsmasq | s.StopDnsmasq):
        return network_unit(step.network_id)
    if isinstance(step, s.ApplyNftRuleset | s.DeleteNftTables):
        return SECURITY_UNIT if step.netns is None else _name_unit(step.netns, units, netns_prefix)
    if isinstance(step, s.AddAddress | s.DeleteAddress | s.AddRoute | s.DeleteRoute | s.SetForwarding):
        return _name_unit(step.netns, units, netns_prefix)
    if isinstance(step, s.SetMtu | s.SetUp | s.DeleteLink) and step.netns is not None:
        return _name_unit(step.netns, units, netns_prefix)
    if isinstance(step, s.AddFdb | s.DeleteFdb):
        return _name_unit(step.device, units, netns_prefix)
    return _name_unit(step.name, units, netns_prefix)


def plan_orphans(
    desired: HostNetworkState,
    existing: ObservedDevices,
    owned: Callable[[str], bool] = lambda name: True,
) -> list[s.Step]:
    """Deletion-only steps for prefixed objects `desired` does not account for, VM taps
    included. `owned(name)` (device, namespace or network id) filters what counts as ours."""
    layout = desired_layout(desired)
    known_taps = set(layout.taps) | {v.tap for ns in layout.namespaces.values() for v in ns.veths}
    peers = {v.peer for ns in layout.namespaces.values() for v in ns.veths}
    wanted = known_taps | set(layout.segments) | peers
    steps: list[s.Step] = []
    for step in plan_layout(layout, existing, desired.netns_prefix):
        # Deleting something desired is a repair (recreate), not orphan removal.
        orphan_link = isinstance(step, s.DeleteLink) and step.name not in wanted
        purge = isinstance(step, s.StopDnsmasq) and step.purge
        if orphan_link or purge or isinstance(step, s.DeleteNamespace):
            steps.append(step)
    steps += [
        s.DeleteLink(name) for name in sorted(existing.links) if name.startswith(TAP_PREFIX) and name not in known_taps
    ]
    return [step for step in steps if owned(_subject(step))]


def _subject(step: s.Step) -> str:
    if isinstance(step, s.StopDnsmasq):
        return step.network_id
    assert isinstance(step, s.DeleteLink | s.DeleteNamespace)
    return step.name
