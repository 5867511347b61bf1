"""Per-unit convergence with the real applier: a network whose dnsmasq refuses to start (an IPv6
DNS server in an IPv4 subnet, stored before subnets were checked) holds back neither another
network's DHCP nor the host's security-group ruleset, and converges once its subnet is fixed."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace

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
    tap_name,
)
from hvd.net.plan import network_unit

from .conftest import Lab

pytestmark = pytest.mark.netns

HOST = "lab-host-1"


def _state(lab: Lab) -> tuple[HostNetworkState, dict[str, PortSpec]]:
    rng = random.Random(11)
    group = default_security_group(str(uuid.uuid4()))
    networks, subnets, ports, vms = [], [], [], {}
    for key, third in (("bad", 21), ("good", 22)):
        net = NetworkSpec(id=str(uuid.uuid4()), type="local")
        dns = ("2001:db8::53",) if key == "bad" else (f"10.213.{third}.53",)
        sub = SubnetSpec(id=str(uuid.uuid4()), network_id=net.id, cidr=f"10.213.{third}.0/24",
                         gateway=f"10.213.{third}.1", dns=dns)
        mac = f"fa:16:3e:{rng.randrange(256):02x}:{rng.randrange(256):02x}:{rng.randrange(256):02x}"
        ports.append(PortSpec(id=str(uuid.uuid4()), network_id=net.id, mac=mac,
                              fixed_ips=(FixedIp(sub.id, f"10.213.{third}.2"),), device_owner=DEVICE_OWNER_DHCP,
                              host=HOST, port_security_enabled=False))
        vms[key] = PortSpec(id=str(uuid.uuid4()), network_id=net.id, mac=mac[:-2] + "77",
                            fixed_ips=(FixedIp(sub.id, f"10.213.{third}.5"),), security_group_ids=(group.id,),
                            host=HOST)
        networks.append(net)
        subnets.append(sub)
    state = HostNetworkState(host=HOST, networks=tuple(networks), subnets=tuple(subnets),
                             ports=(*ports, *vms.values()), security_groups=(group,), netns_prefix=lab.prefix,
                             dhcp_dir=str(lab.workdir / "dhcp"))
    return state, vms


async def test_a_failing_network_stops_neither_other_networks_nor_security_groups(lab: Lab) -> None:
    host = lab.netns("host")
    state, vms = _state(lab)
    guests = {key: lab.guest(host, tap_name(p.id), p.mac, f"g-{key}") for key, p in vms.items()}
    net = HostNetwork(host, dhcp_dir=state.dhcp_dir, netns_prefix=lab.prefix)
    bad, good = state.networks

    report = await net.converge_units(state)
    assert set(report.failed) == {network_unit(bad.id)}, report.failed
    assert "bad IP address" in str(report.failed[network_unit(bad.id)])  # dnsmasq's own complaint
    assert net.dnsmasq.running_pid(good.id) is not None and net.dnsmasq.running_pid(bad.id) is None
    observed = await net.observe(state)
    assert set(observed.nft_tags) == {"bridge hvd_sg", "inet hvd_sg"}, "the security groups reached nftables"
    leased = lab.dhcp_client(guests["good"])
    assert leased.returncode == 0, leased.stderr
    assert "10.213.22.5/24" in lab.exec(guests["good"], "ip", "-4", "addr", "show", "eth0").stdout

    # the next converge retries the failed network only
    again = await net.converge_units(state)
    assert set(again.failed) == {network_unit(bad.id)}
    assert {type(step).__name__ for step in again.applied} <= {"WriteDhcpHosts"}

    # fixed, it converges like any other network
    fixed_subnet = replace(state.subnets[0], dns=("10.213.21.53",))
    fixed = replace(state, subnets=(fixed_subnet, state.subnets[1]))
    healed = await net.converge_units(fixed)
    assert not healed.failed and net.dnsmasq.running_pid(bad.id) is not None
    assert (await net.converge_units(fixed)).applied == []
