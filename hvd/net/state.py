"""What a host has right now, as read by `hvd.net.links.observe` (or built by hand in tests).

Only objects carrying our prefixes are observed, plus devices the desired state names (a
physical NIC, a VM tap made by the hypervisor). The caller may narrow the observation
before planning (`ObservedDevices.restricted`) to decide which objects count as ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class FdbEntry:
    """A forwarding entry on a VXLAN device: frames for `mac` go to VTEP `dst`."""

    device: str
    mac: str
    dst: str


@dataclass(frozen=True)
class Route:
    """A gateway route in a namespace's main table; `dst` is a CIDR or "default"."""

    dst: str
    gateway: str


@dataclass(frozen=True)
class ObservedLink:
    name: str
    kind: str | None = None
    master: str | None = None
    up: bool = False
    mtu: int = 1500
    mac: str | None = None
    vxlan_id: int | None = None
    vxlan_local: str | None = None
    vxlan_dev: str | None = None
    vxlan_learning: bool = False
    vlan_id: int | None = None
    # Bridges only: whether bridged IPv4/IPv6 goes through the inet hooks (security groups).
    bridge_nf_call: bool = False
    addresses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ObservedNamespace:
    name: str
    links: Mapping[str, ObservedLink] = field(default_factory=dict)
    routes: frozenset[Route] = frozenset()
    ip_forward: bool = False
    # table key ("ip hvd_nat") -> tag of the ruleset loaded into it.
    nft_tags: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservedDhcp:
    """A network's dnsmasq: `pid` is set only if the process is alive and is ours."""

    network_id: str
    pid: int | None = None
    argv: tuple[str, ...] | None = None
    hosts: str | None = None


@dataclass(frozen=True)
class ObservedDevices:
    links: Mapping[str, ObservedLink] = field(default_factory=dict)
    fdb: frozenset[FdbEntry] = frozenset()
    namespaces: Mapping[str, ObservedNamespace] = field(default_factory=dict)
    dhcp: Mapping[str, ObservedDhcp] = field(default_factory=dict)
    nft_tags: Mapping[str, str | None] = field(default_factory=dict)

    def restricted(self, owned: Callable[[str], bool]) -> ObservedDevices:
        """Only links, namespaces and dnsmasq instances whose name (network id) `owned` accepts."""
        return replace(
            self,
            links={n: link for n, link in self.links.items() if owned(n)},
            fdb=frozenset(e for e in self.fdb if owned(e.device)),
            namespaces={n: ns for n, ns in self.namespaces.items() if owned(n)},
            dhcp={n: d for n, d in self.dhcp.items() if owned(n)},
        )
