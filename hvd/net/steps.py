"""Small typed actions a network plan is made of.

`netns=None` means the host's own namespace (the root namespace in production, a lab "host"
namespace in tests); any other value names a qdhcp-/qrouter- namespace. Each step is
applied by exactly one adapter (`hvd.net.apply` dispatches).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CreateNamespace:
    name: str


@dataclass(frozen=True)
class DeleteNamespace:
    """Deleting a namespace also removes the veth pairs that have one end inside it."""

    name: str


@dataclass(frozen=True)
class CreateBridge:
    """A bridge whose IPv4/IPv6 traffic passes the inet hooks, so security groups are stateful."""

    name: str
    mtu: int


@dataclass(frozen=True)
class SetBridgeNetfilter:
    name: str


@dataclass(frozen=True)
class CreateVxlan:
    """`vxlan id N local <ip> dev <underlay> dstport 4789`, learning off (l2population)."""

    name: str
    vni: int
    local_ip: str
    underlay: str
    mtu: int
    port: int = 4789


@dataclass(frozen=True)
class CreateVlan:
    name: str
    parent: str
    vid: int
    mtu: int


@dataclass(frozen=True)
class CreateVeth:
    """A veth pair: `name` stays in the host namespace, `peer` is moved into `peer_netns`."""

    name: str
    peer: str
    peer_netns: str
    mtu: int
    peer_mac: str


@dataclass(frozen=True)
class SetMaster:
    name: str
    master: str


@dataclass(frozen=True)
class SetMtu:
    name: str
    mtu: int
    netns: str | None = None


@dataclass(frozen=True)
class SetUp:
    name: str
    netns: str | None = None


@dataclass(frozen=True)
class DeleteLink:
    name: str
    netns: str | None = None


@dataclass(frozen=True)
class AddFdb:
    device: str
    mac: str
    dst: str


@dataclass(frozen=True)
class DeleteFdb:
    device: str
    mac: str
    dst: str


@dataclass(frozen=True)
class AddAddress:
    netns: str
    device: str
    address: str


@dataclass(frozen=True)
class DeleteAddress:
    netns: str
    device: str
    address: str


@dataclass(frozen=True)
class AddRoute:
    netns: str
    dst: str
    gateway: str


@dataclass(frozen=True)
class DeleteRoute:
    netns: str
    dst: str
    gateway: str


@dataclass(frozen=True)
class SetForwarding:
    """IPv4 forwarding inside a router namespace."""

    netns: str
    enabled: bool


@dataclass(frozen=True)
class ApplyNftRuleset:
    """Atomically replace `tables` (e.g. "bridge hvd_sg") with the rendered `ruleset`."""

    netns: str | None
    tables: tuple[str, ...]
    ruleset: str
    tag: str


@dataclass(frozen=True)
class DeleteNftTables:
    netns: str | None
    tables: tuple[str, ...]


@dataclass(frozen=True)
class WriteDhcpHosts:
    network_id: str
    content: str


@dataclass(frozen=True)
class StartDnsmasq:
    network_id: str
    netns: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ReloadDnsmasq:
    """SIGHUP: dnsmasq re-reads its hosts file."""

    network_id: str
    pid: int


@dataclass(frozen=True)
class StopDnsmasq:
    """Stop the process; `purge` also removes the network's DHCP state directory."""

    network_id: str
    pid: int | None
    purge: bool = True


Step = (
    CreateNamespace
    | DeleteNamespace
    | CreateBridge
    | SetBridgeNetfilter
    | CreateVxlan
    | CreateVlan
    | CreateVeth
    | SetMaster
    | SetMtu
    | SetUp
    | DeleteLink
    | AddFdb
    | DeleteFdb
    | AddAddress
    | DeleteAddress
    | AddRoute
    | DeleteRoute
    | SetForwarding
    | ApplyNftRuleset
    | DeleteNftTables
    | WriteDhcpHosts
    | StartDnsmasq
    | ReloadDnsmasq
    | StopDnsmasq
)

DELETION_STEPS = (DeleteNamespace, DeleteLink, DeleteFdb, StopDnsmasq, DeleteNftTables)
