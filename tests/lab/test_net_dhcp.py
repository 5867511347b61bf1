"""Real bridges, veths, namespaces and dnsmasq: guests get leases and reach each other;
deleting the network removes exactly what was created."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from hvd.net.apply import HostNetwork
from hvd.net.model import (
    DEVICE_OWNER_DHCP,
    FixedIp,
    HostNetworkState,
    NetworkSpec,
    PortSpec,
    SubnetSpec,
    default_security_group,
    dhcp_namespace,
    generate_mac,
    tap_name,
)

from .conftest import Lab

pytestmark = pytest.mark.netns

HOST = "lab-host-1"


def _state(lab: Lab) -> tuple[HostNetworkState, list[PortSpec]]:
    rng = random.Random(7)
    net = NetworkSpec(id=str(uuid.uuid4()), type="local")
    sub = SubnetSpec(id=str(uuid.uuid4()), network_id=net.id, cidr="10.213.1.0/24", gateway="10.213.1.1")
    group = default_security_group(str(uuid.uuid4()))
    dhcp = PortSpec(
        id=str(uuid.uuid4()),
        network_id=net.id,
        mac=generate_mac(rng),
        fixed_ips=(FixedIp(sub.id, "10.213.1.2"),),
        device_owner=DEVICE_OWNER_DHCP,
        host=HOST,
        port_security_enabled=False,
    )
    vms = [
        PortSpec(
            id=str(uuid.uuid4()),
            network_id=net.id,
            mac=generate_mac(rng),
            fixed_ips=(FixedIp(sub.id, f"10.213.1.{5 + i}"),),
            security_group_ids=(group.id,),
            host=HOST,
        )
        for i in range(2)
    ]
    state = HostNetworkState(
        host=HOST,
        networks=(net,),
        subnets=(sub,),
        ports=(dhcp, *vms),
        security_groups=(group,),
        netns_prefix=lab.prefix,
        dhcp_dir=str(lab.workdir / "dhcp"),
    )
    return state, vms


async def test_guests_get_leases_and_ping_and_delete_is_exact(lab: Lab) -> None:
    host = lab.netns("host")
    state, vms = _state(lab)
    guests = [lab.guest(host, tap_name(p.id), p.mac, f"g{i}") for i, p in enumerate(vms)]
    net = HostNetwork(host, dhcp_dir=state.dhcp_dir, netns_prefix=lab.prefix)

    applied = await net.converge(state)
    assert applied, "a fresh host needs steps"
    assert await net.converge(state) == [], "re-planning after applying must give no steps"

    for guest, port in zip(guests, vms, strict=True):
        result = lab.dhcp_client(guest)
        assert result.returncode == 0, result.stderr
        shown = lab.exec(guest, "ip", "-4", "addr", "show", "eth0").stdout
        assert f"{port.fixed_ips[0].ip}/24" in shown
    assert lab.ping(guests[0], vms[1].fixed_ips[0].ip)
    assert lab.ping(guests[1], vms[0].fixed_ips[0].ip)

    # A new port on the network only rewrites the hosts file and reloads dnsmasq.
    pid = net.dnsmasq.running_pid(state.networks[0].id)
    assert pid is not None
    # A port on another host in the same group: its address joins the group's member set.
    extra = PortSpec(
        id=str(uuid.uuid4()),
        network_id=state.networks[0].id,
        mac="fa:16:3e:00:00:99",
        fixed_ips=(FixedIp(state.subnets[0].id, "10.213.1.9"),),
        security_group_ids=vms[0].security_group_ids,
        host="elsewhere",
    )
    grown = replace(state, ports=(*state.ports, extra))
    kinds = [type(s).__name__ for s in await net.converge(grown)]
    assert kinds == ["WriteDhcpHosts", "ReloadDnsmasq", "ApplyNftRuleset"]
    assert net.dnsmasq.running_pid(state.networks[0].id) == pid
    hosts = Path(net.dnsmasq.paths(state.networks[0].id).hosts).read_text()
    assert "fa:16:3e:00:00:99,host-10-213-1-9,10.213.1.9\n" in hosts

    # Supervision: a dead dnsmasq is restarted.
    lab.exec(host, "kill", "-9", str(pid))
    for _ in range(100):
        if net.dnsmasq.running_pid(state.networks[0].id) is None:
            break
        await asyncio.sleep(0.02)
    assert await net.supervise_dhcp(grown) == [state.networks[0].id]
    assert net.dnsmasq.running_pid(state.networks[0].id) not in (None, pid)

    # Deleting the network removes its bridge, namespace, dnsmasq and rules, nothing else.
    empty = HostNetworkState(host=HOST, netns_prefix=lab.prefix, dhcp_dir=state.dhcp_dir)
    await net.converge(empty)
    after = await net.observe(empty)
    assert set(after.links) == {tap_name(p.id) for p in vms}, "VM taps belong to the hypervisor"
    assert all(link.master is None for link in after.links.values())
    assert after.namespaces == {} and after.dhcp == {} and after.nft_tags == {}
    assert dhcp_namespace(state.networks[0].id, lab.prefix) not in lab.exec(host, "ip", "netns", "list").stdout
    assert net.dnsmasq.running_pid(state.networks[0].id) is None
    assert await net.converge(empty) == []

    orphans = await net.remove_orphans(empty)
    assert sorted(type(s).__name__ for s in orphans) == ["DeleteLink", "DeleteLink"]
    assert (await net.observe(empty)).links == {}
