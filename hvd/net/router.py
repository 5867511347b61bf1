"""Routers: a `qrouter-<id>` namespace with `qr-` legs on tenant bridges and a `qg-` leg on
the external bridge, forwarding on, NAT from `hvd.net.nft`, floating IPs as /32 on `qg-`, and
with the metadata service on, 169.254.169.254/32 on each IPv4 `qr-` leg.

`router_layout` is pure; the forwarding sysctl is the only router-specific side effect
(links, addresses and routes go through `hvd.net.links`).
"""

from __future__ import annotations

import ipaddress

from hvd.net.layout import NamespaceLayout, VethLayout
from hvd.net.model import (
    METADATA_IP,
    HostNetworkState,
    RouterSpec,
    SubnetSpec,
    bridge_name,
    router_gateway_name,
    router_interface_name,
    router_namespace,
    tap_name,
)
from hvd.net.nft import NAT_TABLES, render_router_nat
from hvd.net.proc import in_netns, run
from hvd.net.state import Route


def _metadata_address(state: HostNetworkState, subnet: SubnetSpec) -> set[str]:
    return {f"{METADATA_IP}/32"} if state.metadata and subnet.ip_version == 4 else set()


def router_layout(router: RouterSpec, state: HostNetworkState) -> NamespaceLayout:
    """Namespace, veths, addresses, default route and NAT for one router hosted here."""
    netns = router_namespace(router.id, state.netns_prefix)
    veths = []
    inside = []
    for iface in sorted(router.interfaces, key=lambda i: i.port_id):
        subnet = state.subnet(iface.subnet_id)
        network = state.network(subnet.network_id)
        inside.append(subnet.cidr)
        veths.append(
            VethLayout(
                tap=tap_name(iface.port_id),
                peer=router_interface_name(iface.port_id),
                netns=netns,
                bridge=bridge_name(network.id),
                mac=iface.mac,
                mtu=network.mtu,
                # the metadata service answers guests that reach it through their router (hvd.net.metadata)
                addresses=frozenset({subnet.interface(iface.ip)} | _metadata_address(state, subnet)),
            )
        )
    routes: frozenset[Route] = frozenset()
    nft = None
    gw = router.gateway
    if gw is not None:
        ext_subnet = state.subnet(gw.subnet_id)
        ext_net = state.network(gw.network_id)
        gw_dev = router_gateway_name(gw.port_id)
        addresses = {ext_subnet.interface(gw.ip)}
        # Floating IPs live on qg- (not in the guest), so the router answers ARP for them.
        addresses |= {f"{ipaddress.ip_address(f.floating_ip)}/32" for f in router.floating_ips}
        veths.append(
            VethLayout(
                tap=tap_name(gw.port_id),
                peer=gw_dev,
                netns=netns,
                bridge=bridge_name(ext_net.id),
                mac=gw.mac,
                mtu=ext_net.mtu,
                addresses=frozenset(addresses),
            )
        )
        if ext_subnet.gateway:
            routes = frozenset({Route("default", ext_subnet.gateway)})
        nft = render_router_nat(router, gw_dev, inside)
    return NamespaceLayout(
        name=netns,
        veths=tuple(veths),
        routes=routes,
        forwarding=True,
        nft=nft,
        nft_tables=NAT_TABLES,
    )


async def set_forwarding(netns: str, enabled: bool) -> None:
    await run(in_netns(netns, ["sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(enabled)}"]))


async def read_forwarding(netns: str) -> bool:
    out = await run(in_netns(netns, ["sysctl", "-n", "net.ipv4.ip_forward"]))
    return out.stdout.strip() == "1"
