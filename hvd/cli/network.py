"""CLI objects of networking (Neutron's model): networks, subnets, ports and floating IPs (with
associate/disassociate). Routers are in hvd.cli.router, security groups in hvd.cli.secgroup."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hvd.cli.commands import Action, Opt, Registry, Resource, body_from
from hvd.cli.http import Session
from hvd.cli.output import print_one


def fields(*names: str) -> Callable[[str], dict[str, str]]:
    """An argparse type for `a=1,b=2` with exactly these keys (dashes in keys become underscores)."""

    def parse(text: str) -> dict[str, str]:
        got: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in names or not value:
                raise argparse.ArgumentTypeError(f"expected {','.join(n + '=...' for n in names)}, got {text!r}")
            got[key] = value.strip()
        return got

    return parse


NETWORK = Resource(
    "network", "/v1/networks", "networks",
    ("id", "name", "network_type", "segmentation_id", "shared", "external", "subnets"), ref="network id or name",
    create=(Opt("name", "name", "network name"),
            Opt("--type", "network_type", "provider type (admin)", choices=("local", "flat", "vlan", "vxlan")),
            Opt("--physical-network", "physical_network", "physical label (admin)"),
            Opt("--segment", "segmentation_id", "VLAN id / VNI (admin)", type=int),
            Opt("--mtu", "mtu", "MTU", type=int),
            Opt("--shared", "shared", "usable by every project (admin)", kind="const", const=True),
            Opt("--external", "external", "external network for routers (admin)", kind="const", const=True)),
    update=(Opt("--name", "name", "new name"),
            Opt("--shared", "shared", "usable by every project (admin)", kind="const", const=True),
            Opt("--no-shared", "shared", "usable by its project only (admin)", kind="const", const=False)),
)

HOST_ROUTE = Opt("--host-route", "host_routes", "destination=CIDR,nexthop=IP (repeat)", kind="list",
                 type=fields("destination", "nexthop"), metavar="destination=CIDR,nexthop=IP")
SUBNET = Resource(
    "subnet", "/v1/subnets", "subnets", ("id", "name", "network_id", "cidr", "gateway_ip", "enable_dhcp"),
    ref="subnet id or name",
    create=(Opt("name", "name", "subnet name"),
            Opt("--network", "network", "network id or name", required=True),
            Opt("--cidr", "cidr", "e.g. 10.0.0.0/24", required=True),
            Opt("--gateway", "gateway_ip", "gateway address (default: the first)"),
            Opt("--allocation-pool", "allocation_pools", "start=IP,end=IP (repeat)", kind="list",
                type=fields("start", "end"), metavar="start=IP,end=IP"),
            Opt("--no-dhcp", "enable_dhcp", "no DHCP", kind="const", const=False),
            Opt("--dns", "dns_nameservers", "DNS server (repeat)", kind="list"),
            HOST_ROUTE),
    update=(Opt("--name", "name", "new name"),
            Opt("--dns", "dns_nameservers", "DNS servers (repeat; replaces the list)", kind="list"),
            HOST_ROUTE),
)

PORT_SECURITY = (Opt("--enable-port-security", "port_security_enabled", "anti-spoofing and security groups",
                     kind="const", const=True),
                 Opt("--disable-port-security", "port_security_enabled", "no anti-spoofing, no security groups",
                     kind="const", const=False))
PORT = Resource(
    "port", "/v1/ports", "ports", ("id", "name", "mac_address", "fixed_ips", "device_owner", "status"),
    ref="port id or name", summary=lambda row: {**row, "fixed_ips": [ip["ip_address"] for ip in row["fixed_ips"]]},
    create=(Opt("name", "name", "port name"),
            Opt("--network", "network", "network id or name", required=True),
            Opt("--fixed-ip", "fixed_ips", "subnet-id=ID and/or ip-address=IP (repeat)", kind="list",
                type=fields("subnet_id", "ip_address"), metavar="subnet-id=ID,ip-address=IP"),
            Opt("--security-group", "security_groups", "security group id or name (repeat; default: default)",
                kind="list"),
            Opt("--mac-address", "mac_address", "MAC address (default: fa:16:3e:...)"),
            *PORT_SECURITY),
    update=(Opt("--name", "name", "new name"),
            Opt("--security-group", "security_groups", "security group (repeat; replaces the list)", kind="list"),
            *PORT_SECURITY),
)

FLOATING_IP = Resource(
    "floating-ip", "/v1/floating-ips", "floating_ips",
    ("id", "floating_ip_address", "fixed_ip_address", "port_id", "router_id", "status"), ref="floating IP id",
    create=(Opt("--network", "floating_network", "external network id or name", required=True),
            Opt("--address", "floating_ip_address", "this address of the external network"),
            Opt("--port", "port", "associate with this port at once"),
            Opt("--fixed-ip", "fixed_ip_address", "with --port: which of its addresses")),
)
ASSOCIATE_OPTS = (Opt("floating_ip", "", "floating IP id", metavar="FLOATING_IP"),
                  Opt("port", "port", "port id or name"),
                  Opt("--fixed-ip", "fixed_ip_address", "which of the port's addresses (default: its first)"))


def fip_associate(session: Session, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"port": args.port, **body_from(ASSOCIATE_OPTS[2:], args)}
    print_one(session.call("POST", FLOATING_IP.url(args.floating_ip) + "/associate", body), args)


def fip_disassociate(session: Session, args: argparse.Namespace) -> None:
    print_one(session.call("POST", FLOATING_IP.url(args.floating_ip) + "/disassociate", {}), args)


def register_network(registry: Registry) -> None:
    registry.register_resource(NETWORK, "networks")
    registry.register_resource(SUBNET, "subnets")
    registry.register_resource(PORT, "ports")
    registry.register_resource(FLOATING_IP, "floating IPs")
    registry.register_action("floating-ip", Action(
        "associate", "send a floating IP's traffic to a port", fip_associate, ASSOCIATE_OPTS,
        operations=("POST /v1/floating-ips/{id}/associate",)))
    registry.register_action("floating-ip", Action(
        "disassociate", "detach a floating IP from its port", fip_disassociate,
        (Opt("floating_ip", "", "floating IP id", metavar="FLOATING_IP"),),
        operations=("POST /v1/floating-ips/{id}/disassociate",)))
