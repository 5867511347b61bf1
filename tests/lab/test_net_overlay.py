"""Two lab hosts (namespaces) joined by an underlay veth: VXLAN with l2population forwarding
entries from the plan, and VLAN where the kernel has 802.1Q."""

from __future__ import annotations

import uuid

import pytest

from hvd.net.apply import HostNetwork
from hvd.net.model import (
    DEVICE_OWNER_DHCP,
    FixedIp,
    HostNetworkState,
    LocalVtep,
    NetworkSpec,
    PortSpec,
    RemoteVtep,
    SubnetSpec,
    default_security_group,
    tap_name,
    vxlan_name,
)
from hvd.net.proc import KernelFeatureMissing
from hvd.net.state import FdbEntry

from .conftest import Lab

pytestmark = pytest.mark.netns

VTEPS = {"host-a": "10.213.5.1", "host-b": "10.213.5.2"}


def _two_hosts(lab: Lab) -> dict[str, str]:
    hosts = {name: lab.netns(name) for name in VTEPS}
    a, b = hosts["host-a"], hosts["host-b"]
    # MTU 1600 on the underlay leaves room for the 50-byte VXLAN header on 1500-byte frames.
    lab.exec(
        a, "ip", "link", "add", "und0", "mtu", "1600", "type", "veth", "peer", "name", "und0", "netns", b, check=True
    )
    for name, ns in hosts.items():
        lab.exec(ns, "ip", "addr", "add", f"{VTEPS[name]}/24", "dev", "und0", check=True)
        lab.exec(ns, "ip", "link", "set", "und0", "mtu", "1600", "up", check=True)
    return hosts


def _network(lab: Lab, net: NetworkSpec, cidr_prefix: str) -> tuple[list[PortSpec], HostNetworkState]:
    sub = SubnetSpec(str(uuid.uuid4()), net.id, f"{cidr_prefix}.0/24", gateway=f"{cidr_prefix}.1")
    group = default_security_group("sg-" + uuid.uuid4().hex[:8])
    dhcp = PortSpec(
        str(uuid.uuid4()),
        net.id,
        "fa:16:3e:05:00:02",
        (FixedIp(sub.id, f"{cidr_prefix}.2"),),
        device_owner=DEVICE_OWNER_DHCP,
        host="host-a",
        port_security_enabled=False,
    )
    vms = [
        PortSpec(
            str(uuid.uuid4()),
            net.id,
            f"fa:16:3e:05:00:{10 + i:02x}",
            (FixedIp(sub.id, f"{cidr_prefix}.{10 + i}"),),
            security_group_ids=(group.id,),
            host=host,
        )
        for i, host in enumerate(VTEPS)
    ]
    template = HostNetworkState(
        host="",
        networks=(net,),
        subnets=(sub,),
        ports=(dhcp, *vms),
        security_groups=(group,),
        vteps=tuple(RemoteVtep(h, ip) for h, ip in VTEPS.items()),
    )
    return vms, template


def _for_host(lab: Lab, template: HostNetworkState, host: str) -> tuple[HostNetwork, HostNetworkState]:
    prefix = f"{lab.prefix}{host}-"
    net = HostNetwork(lab.prefix + host, dhcp_dir=str(lab.workdir / f"dhcp-{host}"), netns_prefix=prefix)
    state = HostNetworkState(
        **{
            **template.__dict__,
            "host": host,
            "local_vtep": LocalVtep(VTEPS[host], "und0"),
            "netns_prefix": prefix,
            "dhcp_dir": net.dnsmasq.dhcp_dir,
        }
    )
    return net, state


async def test_vxlan_l2population_carries_dhcp_and_traffic(lab: Lab) -> None:
    hosts = _two_hosts(lab)
    net = NetworkSpec(str(uuid.uuid4()), "vxlan", segmentation_id=1777, mtu=1500)
    vms, template = _network(lab, net, "10.213.6")
    guests = {p.host: lab.guest(hosts[p.host], tap_name(p.id), p.mac, f"g-{p.host}") for p in vms}

    for host in VTEPS:
        hn, state = _for_host(lab, template, host)
        await hn.converge(state)
        assert await hn.converge(state) == []
        observed = await hn.observe(state)
        link = observed.links[vxlan_name(1777)]
        assert (link.vxlan_id, link.vxlan_local, link.vxlan_dev, link.vxlan_learning) == (
            1777,
            VTEPS[host],
            "und0",
            False,
        )
        assert link.master == net.bridge
        other = next(h for h in VTEPS if h != host)
        remote_macs = {p.mac for p in template.ports if p.host == other}
        assert observed.fdb == frozenset(
            FdbEntry(vxlan_name(1777), mac, VTEPS[other]) for mac in {"00:00:00:00:00:00", *remote_macs}
        )

    # host-b's guest gets its lease from dnsmasq on host-a, across the tunnel.
    for host, guest in guests.items():
        leased = lab.dhcp_client(guest)
        assert leased.returncode == 0, f"{host}: {leased.stderr}"
    assert lab.ping(guests["host-a"], "10.213.6.11")
    assert lab.ping(guests["host-b"], "10.213.6.10")
    # Full-size frames fit: 1472 bytes of ICMP payload + headers = 1500 inside the tunnel.
    big = lab.exec(guests["host-b"], "busybox", "ping", "-c", "1", "-W", "2", "-s", "1472", "10.213.6.10")
    assert big.returncode == 0, big.stdout

    # Deleting the network on host-b removes its bridge, VXLAN device and fdb entries there.
    hn_b, state_b = _for_host(lab, template, "host-b")
    await hn_b.converge(HostNetworkState(host="host-b", netns_prefix=state_b.netns_prefix, dhcp_dir=state_b.dhcp_dir))
    after = await hn_b.observe(state_b)
    assert net.bridge not in after.links and vxlan_name(1777) not in after.links and not after.fdb


async def test_vlan_needs_8021q(lab: Lab) -> None:
    hosts = _two_hosts(lab)
    net = NetworkSpec(str(uuid.uuid4()), "vlan", segmentation_id=213, physical_nic="und0")
    vms, template = _network(lab, net, "10.213.7")
    guests = {p.host: lab.guest(hosts[p.host], tap_name(p.id), p.mac, f"g-{p.host}") for p in vms}
    for host in VTEPS:
        hn, state = _for_host(lab, template, host)
        try:
            await hn.converge(state)
        except KernelFeatureMissing as exc:
            assert str(exc) == "kernel lacks 802.1Q VLAN support (module 8021q)"
            pytest.skip("kernel lacks 802.1Q VLAN links")
        assert await hn.converge(state) == []
        assert (await hn.observe(state)).links["und0.213"].master == net.bridge
    for guest in guests.values():
        assert lab.dhcp_client(guest).returncode == 0
    assert lab.ping(guests["host-b"], "10.213.7.10")
