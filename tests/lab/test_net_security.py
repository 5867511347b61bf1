"""Security groups on live bridged ports: nftables (bridge + inet tables) with conntrack."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from hvd.net.apply import HostNetwork
from hvd.net.model import (
    FixedIp,
    HostNetworkState,
    NetworkSpec,
    PortSpec,
    SecurityGroupRuleSpec,
    SubnetSpec,
    default_security_group,
    tap_name,
)

from .conftest import Lab

pytestmark = pytest.mark.netns

HOST = "lab-host-1"


async def test_icmp_follows_rules_on_running_ports(lab: Lab) -> None:
    host = lab.netns("host")
    net = NetworkSpec(id=str(uuid.uuid4()), type="local")
    sub = SubnetSpec(id=str(uuid.uuid4()), network_id=net.id, cidr="10.213.2.0/24")
    group_a = default_security_group("sg-a-" + uuid.uuid4().hex[:8])
    group_b = default_security_group("sg-b-" + uuid.uuid4().hex[:8])
    a = PortSpec(
        str(uuid.uuid4()),
        net.id,
        "fa:16:3e:02:00:0a",
        (FixedIp(sub.id, "10.213.2.10"),),
        security_group_ids=(group_a.id,),
        host=HOST,
    )
    b = PortSpec(
        str(uuid.uuid4()),
        net.id,
        "fa:16:3e:02:00:0b",
        (FixedIp(sub.id, "10.213.2.11"),),
        security_group_ids=(group_b.id,),
        host=HOST,
    )
    guests = {}
    for port, name in ((a, "ga"), (b, "gb")):
        ns = lab.guest(host, tap_name(port.id), port.mac, name)
        lab.exec(ns, "ip", "addr", "add", f"{port.fixed_ips[0].ip}/24", "dev", "eth0", check=True)
        guests[port.id] = ns
    ga, gb = guests[a.id], guests[b.id]
    state = HostNetworkState(
        host=HOST,
        networks=(net,),
        subnets=(sub,),
        ports=(a, b),
        security_groups=(group_a, group_b),
        netns_prefix=lab.prefix,
        dhcp_dir=str(lab.workdir / "dhcp"),
    )
    hn = HostNetwork(host, dhcp_dir=state.dhcp_dir, netns_prefix=lab.prefix)
    await hn.converge(state)
    assert await hn.converge(state) == []

    # Different default groups: ingress only from the same group, so both directions are blocked.
    assert lab.blocked(ga, "10.213.2.11")
    assert lab.blocked(gb, "10.213.2.10")

    # Allow ICMP into group B from group A: A reaches B (replies pass A as established), not back.
    icmp_from_a = SecurityGroupRuleSpec("ingress", protocol="icmp", remote_group_id=group_a.id)
    opened = replace(state, security_groups=(group_a, replace(group_b, rules=(*group_b.rules, icmp_from_a))))
    kinds = [type(step).__name__ for step in await hn.converge(opened)]
    assert kinds == ["ApplyNftRuleset"]
    assert lab.ping(ga, "10.213.2.11")
    assert lab.blocked(gb, "10.213.2.10")

    # Anti-spoofing: with ICMP open to the whole subnet, A still cannot use another address.
    icmp_any = SecurityGroupRuleSpec("ingress", protocol="icmp", remote_cidr="10.213.2.0/24")
    await hn.converge(replace(state, security_groups=(group_a, replace(group_b, rules=(*group_b.rules, icmp_any)))))
    lab.exec(ga, "ip", "addr", "add", "10.213.2.99/24", "dev", "eth0", check=True)
    spoofed = lab.exec(ga, "busybox", "ping", "-c", "1", "-W", "1", "-I", "10.213.2.99", "10.213.2.11")
    assert spoofed.returncode != 0
    lab.exec(ga, "ip", "addr", "del", "10.213.2.99/24", "dev", "eth0", check=True)
    assert lab.ping(ga, "10.213.2.11")

    # Removing the rule closes ICMP again for new flows.
    await hn.converge(state)
    assert lab.blocked(ga, "10.213.2.11")

    # Putting B in A's group (membership change) opens both ways via the member set.
    b_in_a = replace(b, security_group_ids=(group_a.id,))
    await hn.converge(replace(state, ports=(a, b_in_a)))
    assert lab.ping(ga, "10.213.2.11") and lab.ping(gb, "10.213.2.10")

    # Without port security there is no filtering at all.
    open_ports = tuple(replace(p, port_security_enabled=False) for p in (a, b))
    steps = await hn.converge(replace(state, ports=open_ports))
    assert [type(step).__name__ for step in steps] == ["DeleteNftTables"]
    assert lab.ping(gb, "10.213.2.10")
