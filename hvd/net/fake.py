"""An in-memory host that applies plan steps like the kernel would (for tests of callers).

It enforces the ordering a real host needs (a device must exist before it is enslaved, a
namespace before a veth goes into it) and the kernel's side effects (deleting a namespace
removes the veth peers in the host, deleting a VXLAN device drops its fdb entries).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from hvd.net import steps as s
from hvd.net.proc import KernelFeatureMissing, NetError
from hvd.net.state import FdbEntry, ObservedDevices, ObservedDhcp, ObservedLink, ObservedNamespace, Route


class FakeHost:
    """`nics` are pre-existing devices (physical NICs, underlays, VM taps)."""

    def __init__(self, nics: tuple[str, ...] = (), *, vlan_supported: bool = True) -> None:
        self.links: dict[str, ObservedLink] = {n: ObservedLink(n, kind="device", up=True) for n in nics}
        self.fdb: set[FdbEntry] = set()
        self.namespaces: dict[str, dict[str, ObservedLink]] = {}
        self.routes: dict[str, set[Route]] = {}
        self.forwarding: dict[str, bool] = {}
        self.ns_tags: dict[str, dict[str, str | None]] = {}
        self.tags: dict[str, str | None] = {}
        self.dhcp: dict[str, ObservedDhcp] = {}
        self.peers: dict[str, tuple[str, str]] = {}  # host veth end -> (netns, peer)
        self.vlan_supported = vlan_supported
        self._pids = itertools.count(1000)

    def observed(self) -> ObservedDevices:
        return ObservedDevices(
            links=dict(self.links),
            fdb=frozenset(self.fdb),
            namespaces={
                name: ObservedNamespace(
                    name,
                    dict(links),
                    frozenset(self.routes[name]),
                    self.forwarding[name],
                    dict(self.ns_tags[name]),
                )
                for name, links in self.namespaces.items()
            },
            dhcp=dict(self.dhcp),
            nft_tags=dict(self.tags),
        )

    def apply(self, steps: list[s.Step]) -> None:
        for step in steps:
            handler = getattr(self, "_" + type(step).__name__)
            handler(step)

    def _table(self, netns: str | None) -> dict[str, ObservedLink]:
        if netns is None:
            return self.links
        if netns not in self.namespaces:
            raise NetError(f"no namespace {netns}")
        return self.namespaces[netns]

    def _get(self, name: str, netns: str | None = None) -> ObservedLink:
        table = self._table(netns)
        if name not in table:
            raise NetError(f"no device {name} in {netns or 'host'}")
        return table[name]

    def _add(self, link: ObservedLink, netns: str | None = None) -> None:
        table = self._table(netns)
        if link.name in table:
            raise NetError(f"device {link.name} exists")
        table[link.name] = link

    def _CreateNamespace(self, step: s.CreateNamespace) -> None:
        if step.name in self.namespaces:
            raise NetError(f"namespace {step.name} exists")
        self.namespaces[step.name] = {"lo": ObservedLink("lo", kind=None, mtu=65536)}
        self.routes[step.name] = set()
        self.forwarding[step.name] = False
        self.ns_tags[step.name] = {}

    def _DeleteNamespace(self, step: s.DeleteNamespace) -> None:
        self.namespaces.pop(step.name, None)
        self.routes.pop(step.name, None)
        self.forwarding.pop(step.name, None)
        self.ns_tags.pop(step.name, None)
        for tap, (ns, _) in list(self.peers.items()):
            if ns == step.name:
                self._delete_host(tap)

    def _delete_host(self, name: str) -> None:
        self.links.pop(name, None)
        self.peers.pop(name, None)
        self.fdb = {e for e in self.fdb if e.device != name}
        for other, link in list(self.links.items()):
            if link.master == name:
                self.links[other] = replace(link, master=None)

    def _CreateBridge(self, step: s.CreateBridge) -> None:
        self._add(ObservedLink(step.name, kind="bridge", mtu=step.mtu, bridge_nf_call=True))

    def _SetBridgeNetfilter(self, step: s.SetBridgeNetfilter) -> None:
        self.links[step.name] = replace(self._get(step.name), bridge_nf_call=True)

    def _CreateVxlan(self, step: s.CreateVxlan) -> None:
        self._get(step.underlay)
        self._add(
            ObservedLink(
                step.name,
                kind="vxlan",
                mtu=step.mtu,
                vxlan_id=step.vni,
                vxlan_local=step.local_ip,
                vxlan_dev=step.underlay,
            )
        )

    def _CreateVlan(self, step: s.CreateVlan) -> None:
        if not self.vlan_supported:
            raise KernelFeatureMissing("kernel lacks 802.1Q VLAN support (module 8021q)")
        self._get(step.parent)
        self._add(ObservedLink(step.name, kind="vlan", mtu=step.mtu, vlan_id=step.vid))

    def _CreateVeth(self, step: s.CreateVeth) -> None:
        self._table(step.peer_netns)
        self._add(ObservedLink(step.name, kind="veth", mtu=step.mtu))
        self._add(ObservedLink(step.peer, kind="veth", mtu=step.mtu, mac=step.peer_mac), step.peer_netns)
        self.peers[step.name] = (step.peer_netns, step.peer)

    def _SetMaster(self, step: s.SetMaster) -> None:
        if self._get(step.master).kind != "bridge":
            raise NetError(f"{step.master} is not a bridge")
        self.links[step.name] = replace(self._get(step.name), master=step.master)

    def _SetMtu(self, step: s.SetMtu) -> None:
        self._table(step.netns)[step.name] = replace(self._get(step.name, step.netns), mtu=step.mtu)

    def _SetUp(self, step: s.SetUp) -> None:
        self._table(step.netns)[step.name] = replace(self._get(step.name, step.netns), up=True)

    def _DeleteLink(self, step: s.DeleteLink) -> None:
        if step.netns is None:
            peer = self.peers.get(step.name)
            if peer is not None:
                self.namespaces.get(peer[0], {}).pop(peer[1], None)
            self._delete_host(step.name)
            return
        if step.netns in self.namespaces:
            self.namespaces[step.netns].pop(step.name, None)
            for tap, (ns, peer_name) in list(self.peers.items()):
                if (ns, peer_name) == (step.netns, step.name):
                    self._delete_host(tap)

    def _AddFdb(self, step: s.AddFdb) -> None:
        self._get(step.device)
        self.fdb.add(FdbEntry(step.device, step.mac, step.dst))

    def _DeleteFdb(self, step: s.DeleteFdb) -> None:
        self.fdb.discard(FdbEntry(step.device, step.mac, step.dst))

    def _AddAddress(self, step: s.AddAddress) -> None:
        link = self._get(step.device, step.netns)
        if step.address in link.addresses:
            raise NetError(f"{step.address} already on {step.device}")
        self.namespaces[step.netns][step.device] = replace(link, addresses=link.addresses | {step.address})

    def _DeleteAddress(self, step: s.DeleteAddress) -> None:
        link = self._get(step.device, step.netns)
        self.namespaces[step.netns][step.device] = replace(link, addresses=link.addresses - {step.address})

    def _AddRoute(self, step: s.AddRoute) -> None:
        self._table(step.netns)
        self.routes[step.netns].add(Route(step.dst, step.gateway))

    def _DeleteRoute(self, step: s.DeleteRoute) -> None:
        self.routes.get(step.netns, set()).discard(Route(step.dst, step.gateway))

    def _SetForwarding(self, step: s.SetForwarding) -> None:
        self._table(step.netns)
        self.forwarding[step.netns] = step.enabled

    def _ApplyNftRuleset(self, step: s.ApplyNftRuleset) -> None:
        tags = self.tags if step.netns is None else self.ns_tags[step.netns]
        tags.update({t: step.tag for t in step.tables})

    def _DeleteNftTables(self, step: s.DeleteNftTables) -> None:
        tags = self.tags if step.netns is None else self.ns_tags.get(step.netns, {})
        for table in step.tables:
            tags.pop(table, None)

    def _WriteDhcpHosts(self, step: s.WriteDhcpHosts) -> None:
        old = self.dhcp.get(step.network_id, ObservedDhcp(step.network_id))
        self.dhcp[step.network_id] = replace(old, hosts=step.content)

    def _StartDnsmasq(self, step: s.StartDnsmasq) -> None:
        self._table(step.netns)
        for arg in step.argv:  # like dnsmasq: an IPv4 option with a non-IPv4 server is fatal
            if ",option:dns-server," in arg and ":" in arg.split(",option:dns-server,", 1)[1]:
                raise NetError(f"dnsmasq: bad command line options: bad IP address ({arg})")
        old = self.dhcp.get(step.network_id, ObservedDhcp(step.network_id, hosts=""))
        if old.pid is not None:
            raise NetError(f"dnsmasq for {step.network_id} already runs")
        self.dhcp[step.network_id] = replace(old, pid=next(self._pids), argv=step.argv)

    def _ReloadDnsmasq(self, step: s.ReloadDnsmasq) -> None:
        if self.dhcp[step.network_id].pid != step.pid:
            raise NetError("reloading a dnsmasq that is not running")

    def _StopDnsmasq(self, step: s.StopDnsmasq) -> None:
        if step.purge:
            self.dhcp.pop(step.network_id, None)
        elif step.network_id in self.dhcp:
            self.dhcp[step.network_id] = replace(self.dhcp[step.network_id], pid=None, argv=None)
