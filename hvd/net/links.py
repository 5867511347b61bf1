"""Netlink adapter (pyroute2): bridges, VXLAN, VLAN, veths, fdb, addresses, routes, namespaces.

Everything here blocks; `hvd.net.apply` calls it through `asyncio.to_thread`. Each call
opens its own netlink socket in the namespace it works on, so calls are independent and a
worker thread never changes namespace itself. Deletions tolerate objects already gone.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from hvd.net import steps as s
from hvd.net.model import BRIDGE_PREFIX, TAP_PREFIX, VXLAN_PREFIX
from hvd.net.proc import KernelFeatureMissing, NetError
from hvd.net.state import FdbEntry, ObservedLink, ObservedNamespace, Route

_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)
MAIN_TABLE = 254


class LinkOps:
    """Netlink operations for one host; `host_netns` None means the caller's namespace."""

    def __init__(self, host_netns: str | None = None) -> None:
        self.host_netns = host_netns

    @contextmanager
    def _ipr(self, ns: str | None = None) -> Iterator[Any]:
        target = ns if ns is not None else self.host_netns
        ipr = IPRoute() if target is None else _socket_in(target)
        try:
            yield ipr
        finally:
            ipr.close()

    @staticmethod
    def _index(ipr: Any, name: str) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetError(f"no device named {name}")
        return int(found[0])

    # -- applying steps ---------------------------------------------------------------

    def apply(self, step: s.Step) -> None:
        """Apply one netlink-level step (namespaces, links, fdb, addresses, routes)."""
        handler = getattr(self, "_" + type(step).__name__, None)
        if handler is None:
            raise TypeError(f"{type(step).__name__} is not a netlink step")
        try:
            handler(step)
        except NetlinkError as exc:
            # Name the step: the kernel's errno alone ("Invalid argument") says too little.
            raise NetError(f"{step}: {exc.args[-1] if exc.args else exc}") from exc

    def _CreateNamespace(self, step: s.CreateNamespace) -> None:
        if step.name not in netns.listnetns():
            netns.create(step.name)

    def _DeleteNamespace(self, step: s.DeleteNamespace) -> None:
        if step.name not in netns.listnetns():
            return
        # The kernel destroys a namespace lazily (and never while a process holds it), so its
        # veth pairs would outlive the unlink; deleting them first makes removal synchronous.
        with self._ipr(step.name) as ipr:
            for link in list(ipr.get_links()):
                if link.get_attr("IFLA_IFNAME") != "lo":
                    _tolerate_gone(lambda index=link["index"]: ipr.link("del", index=index))
        netns.remove(step.name)

    def _CreateBridge(self, step: s.CreateBridge) -> None:
        with self._ipr() as ipr:
            # Bridged IPv4/IPv6 must reach the inet hooks: security groups rely on conntrack.
            ipr.link(
                "add",
                ifname=step.name,
                kind="bridge",
                mtu=step.mtu,
                br_nf_call_iptables=1,
                br_nf_call_ip6tables=1,
            )

    def _SetBridgeNetfilter(self, step: s.SetBridgeNetfilter) -> None:
        with self._ipr() as ipr:
            ipr.link(
                "set",
                index=self._index(ipr, step.name),
                kind="bridge",
                br_nf_call_iptables=1,
                br_nf_call_ip6tables=1,
            )

    def _CreateVxlan(self, step: s.CreateVxlan) -> None:
        with self._ipr() as ipr:
            ipr.link(
                "add",
                ifname=step.name,
                kind="vxlan",
                mtu=step.mtu,
                vxlan_id=step.vni,
                vxlan_local=step.local_ip,
                vxlan_link=self._index(ipr, step.underlay),
                vxlan_port=step.port,
                # l2population: forwarding entries come from the catalog, not from flooding.
                vxlan_learning=0,
            )

    def _CreateVlan(self, step: s.CreateVlan) -> None:
        with self._ipr() as ipr:
            try:
                ipr.link(
                    "add",
                    ifname=step.name,
                    kind="vlan",
                    link=self._index(ipr, step.parent),
                    vlan_id=step.vid,
                    mtu=step.mtu,
                )
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP:
                    raise KernelFeatureMissing("kernel lacks 802.1Q VLAN support (module 8021q)") from exc
                raise

    def _CreateVeth(self, step: s.CreateVeth) -> None:
        with self._ipr() as ipr:
            ipr.link(
                "add",
                ifname=step.name,
                kind="veth",
                mtu=step.mtu,
                peer={"ifname": step.peer, "net_ns_fd": step.peer_netns, "address": step.peer_mac},
            )

    def _SetMaster(self, step: s.SetMaster) -> None:
        with self._ipr() as ipr:
            ipr.link("set", index=self._index(ipr, step.name), master=self._index(ipr, step.master))

    def _SetMtu(self, step: s.SetMtu) -> None:
        with self._ipr(step.netns) as ipr:
            ipr.link("set", index=self._index(ipr, step.name), mtu=step.mtu)

    def _SetUp(self, step: s.SetUp) -> None:
        with self._ipr(step.netns) as ipr:
            ipr.link("set", index=self._index(ipr, step.name), state="up")

    def _DeleteLink(self, step: s.DeleteLink) -> None:
        if step.netns is not None and step.netns not in netns.listnetns():
            return
        with self._ipr(step.netns) as ipr:
            found = ipr.link_lookup(ifname=step.name)
            if found:
                _tolerate_gone(lambda: ipr.link("del", index=found[0]))

    def _AddFdb(self, step: s.AddFdb) -> None:
        with self._ipr() as ipr:
            ipr.fdb("append", ifindex=self._index(ipr, step.device), lladdr=step.mac, dst=step.dst)

    def _DeleteFdb(self, step: s.DeleteFdb) -> None:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=step.device)
            if found:
                _tolerate_gone(lambda: ipr.fdb("del", ifindex=found[0], lladdr=step.mac, dst=step.dst))

    def _AddAddress(self, step: s.AddAddress) -> None:
        iface = ipaddress.ip_interface(step.address)
        with self._ipr(step.netns) as ipr:
            ipr.addr(
                "add",
                index=self._index(ipr, step.device),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )

    def _DeleteAddress(self, step: s.DeleteAddress) -> None:
        iface = ipaddress.ip_interface(step.address)
        with self._ipr(step.netns) as ipr:
            found = ipr.link_lookup(ifname=step.device)
            if found:
                _tolerate_gone(
                    lambda: ipr.addr("del", index=found[0], address=str(iface.ip), prefixlen=iface.network.prefixlen)
                )

    def _AddRoute(self, step: s.AddRoute) -> None:
        with self._ipr(step.netns) as ipr:
            ipr.route("add", **_route_spec(step.dst, step.gateway))

    def _DeleteRoute(self, step: s.DeleteRoute) -> None:
        with self._ipr(step.netns) as ipr:
            _tolerate_gone(lambda: ipr.route("del", **_route_spec(step.dst, step.gateway)))

    # -- observing ----------------------------------------------------------------------

    def observe_links(self, extra: Iterable[str] = ()) -> tuple[dict[str, ObservedLink], frozenset[FdbEntry]]:
        """Host devices with our prefixes, VLAN devices on our bridges, plus `extra` names
        (NICs and VM taps the desired state mentions); and the fdb entries of our VXLANs."""
        wanted = set(extra)
        with self._ipr() as ipr:
            links = _read_links(ipr)
            keep = {
                name: link
                for name, link in links.items()
                if name.startswith((BRIDGE_PREFIX, VXLAN_PREFIX, TAP_PREFIX))
                or name in wanted
                or (link.kind == "vlan" and (link.master or "").startswith(BRIDGE_PREFIX))
            }
            index_of = {str(m.get_attr("IFLA_IFNAME")): int(m["index"]) for m in ipr.get_links()}
            fdb = set()
            for name, link in keep.items():
                if link.kind != "vxlan":
                    continue
                for entry in ipr.fdb("dump", ifindex=index_of[name]):
                    dst = entry.get_attr("NDA_DST")
                    mac = entry.get_attr("NDA_LLADDR")
                    if dst and mac and entry["ifindex"] == index_of[name]:
                        fdb.add(FdbEntry(name, str(mac), str(dst)))
        return keep, frozenset(fdb)

    def observe_namespaces(self, prefixes: tuple[str, ...]) -> dict[str, ObservedNamespace]:
        """Links (with addresses) and gateway routes of every namespace named with `prefixes`.

        Forwarding and nft state are filled in by the caller (they need subprocesses).
        """
        found = {}
        for name in sorted(netns.listnetns()):
            if not name.startswith(prefixes):
                continue
            try:
                with self._ipr(name) as ipr:
                    links = _read_links(ipr, with_addresses=True)
                    routes = _read_routes(ipr)
            except FileNotFoundError:
                continue  # deleted while we looked
            found[name] = ObservedNamespace(name=name, links=links, routes=routes)
        return found


def _socket_in(name: str) -> Any:
    """An IPRoute socket inside namespace `name`, opened by this thread entering it and coming back.

    pyroute2's own netns sockets fork a helper and SIGTERM it; the forked child still holds the
    daemon's signal wake-up fd, so that SIGTERM reached the daemon's handler and shut it down.
    Never creates the namespace (FileNotFoundError when it is gone).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            netns.setns(target, flags=0, fork=False)
            try:
                return IPRoute()
            finally:
                netns.setns(own, flags=0, fork=False)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _tolerate_gone(call: Any) -> None:
    try:
        call()
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def _route_spec(dst: str, gateway: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"gateway": gateway, "table": MAIN_TABLE}
    if dst != "default":
        net = ipaddress.ip_network(dst)
        spec.update(dst=str(net.network_address), dst_len=net.prefixlen)
    elif ipaddress.ip_address(gateway).version == 6:
        spec.update(dst="::", dst_len=0)
    return spec


def _read_links(ipr: Any, *, with_addresses: bool = False) -> dict[str, ObservedLink]:
    raw = list(ipr.get_links())
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in raw}
    addresses: dict[int, set[str]] = {}
    if with_addresses:
        for a in ipr.get_addr():
            ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
            if ip.version == 6 and ip.is_link_local:  # the kernel's own, not ours (169.254.169.254 is)
                continue
            addresses.setdefault(int(a["index"]), set()).add(f"{ip}/{a['prefixlen']}")
    links = {}
    for m in raw:
        info = m.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        attrs: dict[str, Any] = {}
        if data is not None and hasattr(data, "get_attr"):
            attrs = {key: value for key, value in data["attrs"]}
        master = m.get_attr("IFLA_MASTER")
        vxlan_link = attrs.get("IFLA_VXLAN_LINK")
        name = names[int(m["index"])]
        links[name] = ObservedLink(
            name=name,
            kind=str(kind) if kind is not None else None,
            master=names.get(int(master)) if master else None,
            up=bool(m["flags"] & 1),
            mtu=int(m.get_attr("IFLA_MTU") or 0),
            mac=m.get_attr("IFLA_ADDRESS"),
            vxlan_id=attrs.get("IFLA_VXLAN_ID"),
            vxlan_local=attrs.get("IFLA_VXLAN_LOCAL"),
            vxlan_dev=names.get(int(vxlan_link)) if vxlan_link else None,
            vxlan_learning=bool(attrs.get("IFLA_VXLAN_LEARNING", 0)),
            vlan_id=attrs.get("IFLA_VLAN_ID"),
            bridge_nf_call=bool(attrs.get("IFLA_BR_NF_CALL_IPTABLES")) and bool(attrs.get("IFLA_BR_NF_CALL_IP6TABLES")),
            addresses=frozenset(addresses.get(int(m["index"]), ())),
        )
    return links


def _read_routes(ipr: Any) -> frozenset[Route]:
    routes = set()
    for family in (2, 10):  # AF_INET, AF_INET6
        for r in ipr.get_routes(family=family, table=MAIN_TABLE):
            gateway = r.get_attr("RTA_GATEWAY")
            if not gateway:
                continue
            dst = r.get_attr("RTA_DST")
            routes.add(Route(f"{dst}/{r['dst_len']}" if dst else "default", str(gateway)))
    return frozenset(routes)
