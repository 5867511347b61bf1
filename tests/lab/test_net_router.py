"""A router namespace with SNAT and floating IPs between a tenant network and an "outside"
namespace standing in for the external network's upstream."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from hvd.net.apply import HostNetwork
from hvd.net.model import (
    DEVICE_OWNER_DHCP,
    FixedIp,
    FloatingIp,
    HostNetworkState,
    NetworkSpec,
    PortSpec,
    RouterGateway,
    RouterInterface,
    RouterSpec,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    SubnetSpec,
    default_security_group,
    router_namespace,
    tap_name,
)

from .conftest import Lab

pytestmark = pytest.mark.netns

HOST = "lab-host-1"


async def test_snat_floating_ip_and_disassociation(lab: Lab) -> None:
    host = lab.netns("host")
    outside = lab.netns("outside")
    # The external network's "physical NIC": a veth whose far end is the upstream router.
    lab.exec(
        host,
        "ip",
        "link",
        "add",
        "ext0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        outside,
        check=True,
    )
    lab.exec(outside, "ip", "addr", "add", "10.213.4.1/24", "dev", "eth0", check=True)
    lab.exec(outside, "ip", "link", "set", "eth0", "up", check=True)

    tenant = NetworkSpec(id=str(uuid.uuid4()), type="local")
    external = NetworkSpec(id=str(uuid.uuid4()), type="flat", physical_nic="ext0")
    tsub = SubnetSpec(str(uuid.uuid4()), tenant.id, "10.213.3.0/24", gateway="10.213.3.1")
    esub = SubnetSpec(str(uuid.uuid4()), external.id, "10.213.4.0/24", gateway="10.213.4.1", dhcp_enabled=False)
    base = default_security_group("sg-" + uuid.uuid4().hex[:8])
    group = SecurityGroupSpec(base.id, (*base.rules, SecurityGroupRuleSpec("ingress", protocol="icmp")))
    dhcp = PortSpec(
        str(uuid.uuid4()),
        tenant.id,
        "fa:16:3e:03:00:02",
        (FixedIp(tsub.id, "10.213.3.2"),),
        device_owner=DEVICE_OWNER_DHCP,
        host=HOST,
        port_security_enabled=False,
    )
    vms = [
        PortSpec(
            str(uuid.uuid4()),
            tenant.id,
            f"fa:16:3e:03:00:{5 + i:02x}",
            (FixedIp(tsub.id, f"10.213.3.{5 + i}"),),
            security_group_ids=(group.id,),
            host=HOST,
        )
        for i in range(2)
    ]
    router = RouterSpec(
        id=str(uuid.uuid4()),
        interfaces=(RouterInterface(str(uuid.uuid4()), tsub.id, "10.213.3.1", "fa:16:3e:03:00:01"),),
        gateway=RouterGateway(str(uuid.uuid4()), external.id, esub.id, "10.213.4.10", "fa:16:3e:04:00:0a"),
        floating_ips=(FloatingIp("10.213.3.5", "10.213.4.20"),),
    )
    state = HostNetworkState(
        host=HOST,
        networks=(tenant, external),
        subnets=(tsub, esub),
        ports=(dhcp, *vms),
        security_groups=(group,),
        routers=(router,),
        netns_prefix=lab.prefix,
        dhcp_dir=str(lab.workdir / "dhcp"),
    )
    guests = [lab.guest(host, tap_name(p.id), p.mac, f"g{i}") for i, p in enumerate(vms)]
    hn = HostNetwork(host, dhcp_dir=state.dhcp_dir, netns_prefix=lab.prefix)
    await hn.converge(state)
    assert await hn.converge(state) == []
    for guest in guests:
        leased = lab.dhcp_client(guest)  # also installs the default route via the router
        assert leased.returncode == 0, leased.stderr
        assert "default via 10.213.3.1" in lab.exec(guest, "ip", "route").stdout

    rns = router_namespace(router.id, lab.prefix)
    assert lab.exec(rns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"

    # The outside knows no route to 10.213.3.0/24: only translated traffic can come back.
    assert lab.ping(guests[1], "10.213.4.1"), "SNAT through the router gateway"
    assert lab.ping(guests[0], "10.213.4.1"), "SNAT through the floating IP"
    assert lab.ping(outside, "10.213.4.20"), "DNAT of the floating IP to the guest"
    assert lab.blocked(outside, "10.213.3.5"), "tenant addresses stay unreachable from outside"

    # Disassociating the floating IP stops inbound traffic; SNAT keeps working.
    steps = await hn.converge(replace(state, routers=(replace(router, floating_ips=()),)))
    assert {type(step).__name__ for step in steps} == {"DeleteAddress", "ApplyNftRuleset"}
    assert lab.blocked(outside, "10.213.4.20")
    assert lab.ping(guests[0], "10.213.4.1")

    # Removing the router deletes its namespace (and with it the qr-/qg- veth pairs).
    await hn.converge(replace(state, routers=()))
    observed = await hn.observe(state)
    assert rns not in observed.namespaces
    assert tap_name(router.interfaces[0].port_id) not in observed.links
    assert router.gateway is not None and tap_name(router.gateway.port_id) not in observed.links
