"""What a host needs to know about Neutron-style networking, as plain frozen data.

The compute layer builds these from the catalog and hands them to `hvd.net.plan`. Nothing
here touches the kernel. Device and namespace names follow Neutron's linuxbridge agent so an
operator used to OpenStack recognises them: everything we create carries one of our prefixes.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass
from typing import Literal

NetworkType = Literal["local", "flat", "vlan", "vxlan"]
Direction = Literal["ingress", "egress"]
EtherType = Literal["IPv4", "IPv6"]

# Linux refuses interface names longer than IFNAMSIZ - 1.
IFNAME_MAX = 15
ID_CHARS = 11
VXLAN_PORT = 4789
MAC_PREFIX = "fa:16:3e"

BRIDGE_PREFIX = "brq"
TAP_PREFIX = "tap"
DHCP_DEV_PREFIX = "ns-"
ROUTER_INTERFACE_PREFIX = "qr-"
ROUTER_GATEWAY_PREFIX = "qg-"
VXLAN_PREFIX = "vxlan-"
DHCP_NS_PREFIX = "qdhcp-"
ROUTER_NS_PREFIX = "qrouter-"

DEVICE_OWNER_DHCP = "network:dhcp"
DEVICE_OWNER_ROUTER_INTERFACE = "network:router_interface"
DEVICE_OWNER_ROUTER_GATEWAY = "network:router_gateway"
DEVICE_OWNER_FLOATINGIP = "network:floatingip"
COMPUTE_OWNER_PREFIX = "compute:"
# The metadata service's address inside each qdhcp- namespace (hvd.net.metadata).
METADATA_IP = "169.254.169.254"
METADATA_PORT = 80

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def bridge_name(network_id: str) -> str:
    """Bridge of a network: the same on every host, so l2population data is host independent."""
    return BRIDGE_PREFIX + network_id[:ID_CHARS]


def tap_name(port_id: str) -> str:
    """Bridge-side device of a port (VM tap, or the bridge end of a DHCP/router veth)."""
    return TAP_PREFIX + port_id[:ID_CHARS]


def dhcp_device_name(port_id: str) -> str:
    """Namespace end of the DHCP port's veth pair."""
    return DHCP_DEV_PREFIX + port_id[:ID_CHARS]


def router_interface_name(port_id: str) -> str:
    return ROUTER_INTERFACE_PREFIX + port_id[:ID_CHARS]


def router_gateway_name(port_id: str) -> str:
    return ROUTER_GATEWAY_PREFIX + port_id[:ID_CHARS]


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def vlan_name(nic: str, vid: int) -> str:
    """802.1Q sub-interface `<nic>.<vid>`; raises if Linux could not hold the name."""
    name = f"{nic}.{vid}"
    if len(name) > IFNAME_MAX:
        raise ValueError(f"VLAN device name {name!r} exceeds {IFNAME_MAX} characters")
    return name


def dhcp_namespace(network_id: str, prefix: str = "") -> str:
    """`prefix` lets tests (or several lab hosts on one machine) keep namespaces apart."""
    return f"{prefix}{DHCP_NS_PREFIX}{network_id}"


def router_namespace(router_id: str, prefix: str = "") -> str:
    return f"{prefix}{ROUTER_NS_PREFIX}{router_id}"


def generate_mac(rng: random.Random) -> str:
    """A Neutron-style MAC `fa:16:3e:xx:xx:xx`; pure given the random source."""
    tail = ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    return f"{MAC_PREFIX}:{tail}"


def is_valid_mac(mac: str) -> bool:
    return bool(_MAC_RE.match(mac))


def dhcp_hostname(ip: str) -> str:
    """Neutron's default host name for a fixed IP: `host-10-0-0-5`."""
    return "host-" + re.sub(r"[.:]", "-", ip)


@dataclass(frozen=True)
class NetworkSpec:
    """An L2 domain. `physical_nic` is the host's NIC already mapped from the physical label."""

    id: str
    type: NetworkType
    segmentation_id: int | None = None
    physical_nic: str | None = None
    mtu: int = 1500

    def __post_init__(self) -> None:
        if self.type in ("vlan", "vxlan") and self.segmentation_id is None:
            raise ValueError(f"{self.type} network {self.id} needs a segmentation_id")
        seg = self.segmentation_id
        if self.type == "vlan" and not (seg is not None and 1 <= seg <= 4094):
            raise ValueError(f"VLAN id {self.segmentation_id} is outside 1-4094")
        if self.type == "vxlan" and not (self.segmentation_id is not None and 1 <= self.segmentation_id < 2**24):
            raise ValueError(f"VNI {self.segmentation_id} is outside 1-16777215")
        if self.type in ("flat", "vlan") and not self.physical_nic:
            raise ValueError(f"{self.type} network {self.id} needs a physical_nic")

    @property
    def bridge(self) -> str:
        return bridge_name(self.id)

    @property
    def segment_device(self) -> str | None:
        """The device bridged into `brq...` that carries the segment off the host, if any."""
        if self.type == "vxlan":
            assert self.segmentation_id is not None
            return vxlan_name(self.segmentation_id)
        if self.type == "vlan":
            assert self.physical_nic is not None and self.segmentation_id is not None
            return vlan_name(self.physical_nic, self.segmentation_id)
        if self.type == "flat":
            return self.physical_nic
        return None


@dataclass(frozen=True)
class HostRoute:
    destination: str
    nexthop: str


@dataclass(frozen=True)
class AllocationPool:
    start: str
    end: str


@dataclass(frozen=True)
class SubnetSpec:
    id: str
    network_id: str
    cidr: str
    gateway: str | None = None
    dhcp_enabled: bool = True
    dns: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()
    allocation_pools: tuple[AllocationPool, ...] = ()

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.cidr)  # raises on a malformed CIDR
        if self.gateway is not None and ipaddress.ip_address(self.gateway) not in net:
            raise ValueError(f"gateway {self.gateway} is outside {self.cidr}")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def ip_version(self) -> int:
        return self.network.version

    def interface(self, ip: str) -> str:
        """`ip` with this subnet's prefix length, as an address to put on a device."""
        return f"{ip}/{self.network.prefixlen}"


@dataclass(frozen=True)
class FixedIp:
    subnet_id: str
    ip: str


@dataclass(frozen=True)
class PortSpec:
    """A port anywhere in the cluster; `host` says where it is bound (remote ports feed l2pop
    forwarding entries and security-group member sets)."""

    id: str
    network_id: str
    mac: str
    fixed_ips: tuple[FixedIp, ...] = ()
    device_owner: str = "compute:nova"
    security_group_ids: tuple[str, ...] = ()
    host: str = ""
    port_security_enabled: bool = True
    hostname: str | None = None

    def __post_init__(self) -> None:
        if not is_valid_mac(self.mac):
            raise ValueError(f"port {self.id}: {self.mac!r} is not a lower-case MAC address")

    @property
    def tap(self) -> str:
        return tap_name(self.id)

    @property
    def is_compute(self) -> bool:
        return self.device_owner.startswith(COMPUTE_OWNER_PREFIX)

    def ips(self, version: int | None = None) -> tuple[str, ...]:
        return tuple(f.ip for f in self.fixed_ips if version is None or ipaddress.ip_address(f.ip).version == version)


@dataclass(frozen=True)
class RemoteVtep:
    """Another host's VXLAN endpoint address."""

    host: str
    ip: str


@dataclass(frozen=True)
class LocalVtep:
    """This host's VTEP: an address already configured on `device` (Neutron's `local_ip`)."""

    ip: str
    device: str


@dataclass(frozen=True)
class SecurityGroupRuleSpec:
    """One allow rule. `protocol` is a name (tcp, udp, icmp, icmpv6) or None for any;
    ports apply to tcp/udp only; at most one of remote_cidr / remote_group_id."""

    direction: Direction
    ethertype: EtherType = "IPv4"
    protocol: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: str | None = None
    remote_group_id: str | None = None

    def __post_init__(self) -> None:
        if self.remote_cidr is not None and self.remote_group_id is not None:
            raise ValueError("a rule takes a remote CIDR or a remote group, not both")
        if self.remote_cidr is not None:
            version = ipaddress.ip_network(self.remote_cidr, strict=False).version
            if version != (4 if self.ethertype == "IPv4" else 6):
                raise ValueError(f"remote CIDR {self.remote_cidr} does not match {self.ethertype}")
        if self.port_max is not None and self.port_min is None:
            raise ValueError("port_max given without port_min")
        if self.port_min is not None and self.protocol not in ("tcp", "udp"):
            raise ValueError("port ranges need protocol tcp or udp")
        lo, hi = self.port_min, self.port_max if self.port_max is not None else self.port_min
        if lo is not None and hi is not None and not (1 <= lo <= hi <= 65535):
            raise ValueError(f"bad port range {lo}-{hi}")


@dataclass(frozen=True)
class SecurityGroupSpec:
    id: str
    rules: tuple[SecurityGroupRuleSpec, ...] = ()


def default_security_group(group_id: str) -> SecurityGroupSpec:
    """Neutron's "default" group: all egress, ingress only from members of the same group."""
    return SecurityGroupSpec(
        id=group_id,
        rules=(
            SecurityGroupRuleSpec("egress", "IPv4"),
            SecurityGroupRuleSpec("egress", "IPv6"),
            SecurityGroupRuleSpec("ingress", "IPv4", remote_group_id=group_id),
            SecurityGroupRuleSpec("ingress", "IPv6", remote_group_id=group_id),
        ),
    )


@dataclass(frozen=True)
class RouterInterface:
    """A router port on a tenant subnet (`qr-`); `ip` is usually the subnet's gateway."""

    port_id: str
    subnet_id: str
    ip: str
    mac: str


@dataclass(frozen=True)
class RouterGateway:
    """The router's port on the external network (`qg-`)."""

    port_id: str
    network_id: str
    subnet_id: str
    ip: str
    mac: str


@dataclass(frozen=True)
class FloatingIp:
    fixed_ip: str
    floating_ip: str


@dataclass(frozen=True)
class RouterSpec:
    id: str
    interfaces: tuple[RouterInterface, ...] = ()
    gateway: RouterGateway | None = None
    floating_ips: tuple[FloatingIp, ...] = ()


@dataclass(frozen=True)
class HostNetworkState:
    """Everything one host should have, as decided from the catalog.

    Networks listed get a bridge here. A network gets dnsmasq here when it has a DHCP port
    bound to `host`. Routers listed are hosted here. `ports` holds every port of these
    networks on any host; `netns_prefix` is prepended to qdhcp-/qrouter- namespace names.
    `dhcp_dir` holds one directory per network (hosts file, pid file, leases);
    `dnsmasq_user` is the user dnsmasq drops to (None: its built-in default).
    `unrealisable` names networks with ports here that this host cannot build, and why (left
    out of `networks`, so they hold back nothing else). With `metadata`, each qdhcp- namespace
    also holds METADATA_IP and dnsmasq hands guests a route to it through the DHCP port.
    """

    host: str
    networks: tuple[NetworkSpec, ...] = ()
    subnets: tuple[SubnetSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    security_groups: tuple[SecurityGroupSpec, ...] = ()
    routers: tuple[RouterSpec, ...] = ()
    local_vtep: LocalVtep | None = None
    vteps: tuple[RemoteVtep, ...] = ()
    netns_prefix: str = ""
    dhcp_dir: str = "/var/lib/hvd/dhcp"
    dnsmasq_user: str | None = None
    unrealisable: tuple[tuple[str, str], ...] = ()
    metadata: bool = False

    def network(self, network_id: str) -> NetworkSpec:
        for net in self.networks:
            if net.id == network_id:
                return net
        raise KeyError(f"network {network_id} is not in the host state")

    def subnet(self, subnet_id: str) -> SubnetSpec:
        for sub in self.subnets:
            if sub.id == subnet_id:
                return sub
        raise KeyError(f"subnet {subnet_id} is not in the host state")

    def local_ports(self) -> tuple[PortSpec, ...]:
        return tuple(p for p in self.ports if p.host == self.host)
