"""Pure tests of hvd.net: names, model checks, plans (against the in-memory FakeHost) and
the dnsmasq/nft renderers."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvd.net import steps as s
from hvd.net.apply import apply_isolated
from hvd.net.dhcp import dhcp_paths, dnsmasq_argv, render_hosts
from hvd.net.fake import FakeHost
from hvd.net.model import (
    DEVICE_OWNER_DHCP,
    AllocationPool,
    FixedIp,
    FloatingIp,
    HostNetworkState,
    HostRoute,
    LocalVtep,
    NetworkSpec,
    PortSpec,
    RemoteVtep,
    RouterGateway,
    RouterInterface,
    RouterSpec,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    SubnetSpec,
    bridge_name,
    default_security_group,
    dhcp_device_name,
    dhcp_namespace,
    generate_mac,
    is_valid_mac,
    router_gateway_name,
    router_interface_name,
    router_namespace,
    tap_name,
    vlan_name,
    vxlan_name,
)
from hvd.net.nft import render_router_nat, render_rule, render_security_ruleset
from hvd.net.plan import SECURITY_UNIT, network_unit, plan_host, plan_orphans, plan_units, router_unit
from hvd.net.proc import KernelFeatureMissing
from hvd.net.state import ObservedDevices, ObservedLink

NET_ID = "8f0c6b1e-5d2a-4c39-9d8e-1a2b3c4d5e6f"
PORT_ID = "0d3f2a9c-7b41-4e8e-a1c5-3b2d1e0f9a87"
HOST = "h1"
UNDERLAY = "eth9"
NIC = "eth1"


# -- names and model ------------------------------------------------------------------


def test_device_names_follow_neutron_and_fit_ifnamsiz() -> None:
    assert bridge_name(NET_ID) == "brq8f0c6b1e-5d"
    assert tap_name(PORT_ID) == "tap0d3f2a9c-7b"
    assert dhcp_device_name(PORT_ID) == "ns-0d3f2a9c-7b"
    assert router_interface_name(PORT_ID) == "qr-0d3f2a9c-7b"
    assert router_gateway_name(PORT_ID) == "qg-0d3f2a9c-7b"
    assert vxlan_name(16777215) == "vxlan-16777215"
    assert vlan_name("eth0", 4094) == "eth0.4094"
    assert dhcp_namespace(NET_ID) == f"qdhcp-{NET_ID}"
    assert router_namespace("r1", "hvdt-x-") == "hvdt-x-qrouter-r1"
    for name in (bridge_name(NET_ID), tap_name(PORT_ID), dhcp_device_name(PORT_ID), vxlan_name(16777215)):
        assert len(name) <= 15


def test_vlan_name_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds 15"):
        vlan_name("enp0s31f6abcd", 4000)


def test_generate_mac_is_neutron_style_and_reproducible() -> None:
    macs = [generate_mac(random.Random(1)) for _ in range(2)]
    assert macs[0] == macs[1]
    rng = random.Random(2)
    for _ in range(200):
        mac = generate_mac(rng)
        assert mac.startswith("fa:16:3e:") and is_valid_mac(mac)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "vxlan"}, "segmentation_id"),
        ({"type": "vlan", "segmentation_id": 4095, "physical_nic": "eth0"}, "1-4094"),
        ({"type": "vxlan", "segmentation_id": 2**24}, "VNI"),
        ({"type": "flat"}, "physical_nic"),
    ],
)
def test_network_spec_rejects_incomplete_segments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkSpec(id="n", **kwargs)  # type: ignore[arg-type]


def test_model_checks_gateway_mac_and_rules() -> None:
    with pytest.raises(ValueError, match="outside"):
        SubnetSpec("s", "n", "10.0.0.0/24", gateway="10.0.1.1")
    with pytest.raises(ValueError, match="MAC"):
        PortSpec("p", "n", "FA:16:3E:00:00:01")
    with pytest.raises(ValueError, match="not both"):
        SecurityGroupRuleSpec("ingress", remote_cidr="0.0.0.0/0", remote_group_id="g")
    with pytest.raises(ValueError, match="does not match"):
        SecurityGroupRuleSpec("ingress", "IPv6", remote_cidr="10.0.0.0/8")
    with pytest.raises(ValueError, match="tcp or udp"):
        SecurityGroupRuleSpec("ingress", protocol="icmp", port_min=1, port_max=2)
    with pytest.raises(ValueError, match="bad port range"):
        SecurityGroupRuleSpec("ingress", protocol="tcp", port_min=10, port_max=5)


# -- a universe of desired states --------------------------------------------------------


def _port(pid: str, net: str, mac: str, ip: str, subnet: str, **kw: object) -> PortSpec:
    return PortSpec(pid, net, mac, (FixedIp(subnet, ip),), **kw)  # type: ignore[arg-type]


GROUP = default_security_group("sg-default")
WEB = SecurityGroupSpec("sg-web", (SecurityGroupRuleSpec("ingress", protocol="tcp", port_min=22, port_max=22),))
NETS = {
    "local": NetworkSpec("aaaaaaaa-0000-0000-0000-000000000001", "local"),
    "vxlan": NetworkSpec("bbbbbbbb-0000-0000-0000-000000000002", "vxlan", segmentation_id=1001, mtu=1450),
    "flat": NetworkSpec("cccccccc-0000-0000-0000-000000000003", "flat", physical_nic=NIC),
    "vxlan2": NetworkSpec("dddddddd-0000-0000-0000-000000000004", "vxlan", segmentation_id=1002, mtu=1450),
}
SUBNETS = {
    "local": SubnetSpec("s-local", NETS["local"].id, "10.1.0.0/24", "10.1.0.1", dns=("10.1.0.53",)),
    "vxlan": SubnetSpec("s-vxlan", NETS["vxlan"].id, "10.2.0.0/24", "10.2.0.1"),
    "flat": SubnetSpec("s-ext", NETS["flat"].id, "192.0.2.0/24", "192.0.2.1", dhcp_enabled=False),
    "vxlan2": SubnetSpec("s-vxlan2", NETS["vxlan2"].id, "10.4.0.0/24", "10.4.0.1"),
}


def _ports(key: str, n: int) -> list[PortSpec]:
    net, sub = NETS[key], SUBNETS[key]
    base = sub.network.network_address
    ports = [
        _port(
            f"dhcp-{key}-port-id",
            net.id,
            f"fa:16:3e:{n:02x}:00:02",
            str(base + 2),
            sub.id,
            device_owner=DEVICE_OWNER_DHCP,
            host=HOST,
            port_security_enabled=False,
        )
    ]
    for i in range(n):
        ports.append(
            _port(
                f"vm{i}-{key}-port-id",
                net.id,
                f"fa:16:3e:{n:02x}:01:{i:02x}",
                str(base + 10 + i),
                sub.id,
                host=HOST if i % 2 == 0 else "h2",
                security_group_ids=(GROUP.id, WEB.id),
            )
        )
    return ports


ROUTER = RouterSpec(
    "router-1",
    interfaces=(RouterInterface("rif-local-port", SUBNETS["local"].id, "10.1.0.1", "fa:16:3e:aa:00:01"),),
    gateway=RouterGateway("rgw-port-id-0", NETS["flat"].id, SUBNETS["flat"].id, "192.0.2.10", "fa:16:3e:aa:00:02"),
    floating_ips=(FloatingIp("10.1.0.10", "192.0.2.20"),),
)


def _state(keys: tuple[str, ...], n: int = 2, router: bool = False, **kw: object) -> HostNetworkState:
    ports = [p for k in keys for p in _ports(k, n)]
    routers = (ROUTER,) if router and {"local", "flat"} <= set(keys) else ()
    return HostNetworkState(
        host=HOST,
        networks=tuple(NETS[k] for k in keys),
        subnets=tuple(SUBNETS[k] for k in keys),
        ports=tuple(ports),
        security_groups=(GROUP, WEB),
        routers=routers,
        local_vtep=LocalVtep("172.16.0.1", UNDERLAY),
        vteps=(RemoteVtep("h1", "172.16.0.1"), RemoteVtep("h2", "172.16.0.2")),
        **kw,  # type: ignore[arg-type]
    )


def _fake(**kw: object) -> FakeHost:
    taps = tuple(tap_name(p.id) for k in NETS for p in _ports(k, 3) if p.is_compute and p.host == HOST)
    return FakeHost((UNDERLAY, NIC, *taps), **kw)  # type: ignore[arg-type]


def _converge(host: FakeHost, state: HostNetworkState) -> list[s.Step]:
    steps = plan_host(state, host.observed())
    host.apply(steps)
    assert plan_host(state, host.observed()) == [], "a plan applied must leave nothing to do"
    return steps


FULL = _state(("local", "vxlan", "flat", "vxlan2"), router=True)


def test_full_host_from_scratch_is_idempotent_and_complete() -> None:
    host = _fake()
    steps = _converge(host, FULL)
    obs = host.observed()
    for net in NETS.values():
        assert obs.links[net.bridge].kind == "bridge" and obs.links[net.bridge].bridge_nf_call
    assert obs.links["vxlan-1001"].master == NETS["vxlan"].bridge
    assert obs.links["vxlan-1001"].vxlan_local == "172.16.0.1"
    assert obs.links[NIC].master == NETS["flat"].bridge
    assert obs.links[tap_name("vm0-local-port-id")].master == NETS["local"].bridge
    assert set(obs.namespaces) == {dhcp_namespace(NETS[k].id) for k in ("local", "vxlan", "vxlan2")} | {
        router_namespace("router-1")
    }
    router_ns = obs.namespaces[router_namespace("router-1")]
    assert router_ns.ip_forward and router_ns.nft_tags["ip hvd_nat"]
    assert router_ns.links[router_gateway_name("rgw-port-id-0")].addresses == {
        "192.0.2.10/24",
        "192.0.2.20/32",
    }
    assert router_ns.links[router_interface_name("rif-local-port")].addresses == {"10.1.0.1/24"}
    assert obs.links[tap_name("rif-local-port")].master == NETS["local"].bridge
    assert {(r.dst, r.gateway) for r in router_ns.routes} == {("default", "192.0.2.1")}
    assert set(obs.dhcp) == {NETS[k].id for k in ("local", "vxlan", "vxlan2")}, "no DHCP on a DHCP-off subnet"
    assert set(obs.nft_tags) == {"bridge hvd_sg", "inet hvd_sg"}
    # l2population: a flood entry and one per remote MAC, only towards h2.
    vx = {e for e in obs.fdb if e.device == "vxlan-1001"}
    assert {e.dst for e in vx} == {"172.16.0.2"}
    assert {e.mac for e in vx} == {"00:00:00:00:00:00", "fa:16:3e:02:01:01"}
    # Devices exist before anything refers to them; deletions come first.
    kinds = [type(x).__name__ for x in steps]
    assert kinds.index("CreateBridge") < kinds.index("SetMaster")


@pytest.mark.parametrize("removed", ["local", "vxlan", "flat", "vxlan2"])
def test_deleting_a_network_removes_exactly_its_objects(removed: str) -> None:
    keys = ("local", "vxlan", "flat", "vxlan2")
    rest = tuple(k for k in keys if k != removed)
    full, smaller = _fake(), _fake()
    _converge(full, _state(keys, router=True))
    _converge(full, _state(rest, router=True))
    _converge(smaller, _state(rest, router=True))
    a, b = full.observed(), smaller.observed()
    assert set(a.links) == set(b.links)
    assert {n: x.master for n, x in a.links.items()} == {n: x.master for n, x in b.links.items()}
    assert a.fdb == b.fdb
    assert set(a.namespaces) == set(b.namespaces)
    assert {k: (d.argv, d.hosts) for k, d in a.dhcp.items()} == {k: (d.argv, d.hosts) for k, d in b.dhcp.items()}
    assert NETS[removed].bridge not in a.links


def test_deleting_everything_leaves_only_foreign_devices() -> None:
    host = _fake()
    _converge(host, FULL)
    steps = _converge(host, HostNetworkState(host=HOST))
    assert not any(isinstance(x, s.DeleteLink) and x.name in (UNDERLAY, NIC) for x in steps)
    obs = host.observed()
    assert not obs.namespaces and not obs.dhcp and not obs.nft_tags and not obs.fdb
    assert not any(n.startswith(("brq", "vxlan-")) for n in obs.links)
    assert all(link.master is None for link in obs.links.values())


def test_orphans_include_vm_taps_and_respect_ownership() -> None:
    host = _fake()
    _converge(host, FULL)
    host.apply([s.CreateBridge("brqstray000000", 1500)])
    empty = HostNetworkState(host=HOST)
    orphans = plan_orphans(empty, host.observed())
    names = {x.name for x in orphans if isinstance(x, s.DeleteLink)}
    assert tap_name("vm0-local-port-id") in names and "brqstray000000" in names
    assert UNDERLAY not in names and NIC not in names
    assert any(isinstance(x, s.StopDnsmasq) for x in orphans)
    only_bridge = plan_orphans(empty, host.observed(), owned=lambda n: n == "brqstray000000")
    assert only_bridge == [s.DeleteLink("brqstray000000")]
    every_tap = _state(tuple(NETS), n=3, router=True)  # _fake() made taps for 3 VMs per network
    assert plan_orphans(every_tap, _after(every_tap)) == []


def _after(state: HostNetworkState) -> ObservedDevices:
    host = _fake()
    _converge(host, state)
    return host.observed()


def test_restricted_observation_keeps_foreign_objects_out_of_the_plan() -> None:
    host = _fake()
    _converge(host, FULL)
    host.apply([s.CreateBridge("brqforeign0000", 1500), s.CreateNamespace("qdhcp-foreign")])
    mine = {n.bridge for n in NETS.values()}
    observed = host.observed().restricted(lambda name: not name.endswith("foreign") and name != "brqforeign0000")
    assert plan_host(FULL, observed) == []
    assert s.DeleteLink("brqforeign0000") in plan_host(FULL, host.observed())
    assert mine <= set(observed.links)


def test_new_port_reloads_dnsmasq_without_restart() -> None:
    host = _fake()
    state = _state(("local",), n=2)
    _converge(host, state)
    new = _port("late-port-id-0", NETS["local"].id, "fa:16:3e:99:99:99", "10.1.0.99", "s-local", host="h2")
    steps = _converge(host, replace(state, ports=(*state.ports, new)))
    assert [type(x) for x in steps] == [s.WriteDhcpHosts, s.ReloadDnsmasq]


def test_subnet_option_change_restarts_dnsmasq_keeping_files() -> None:
    host = _fake()
    state = _state(("local",))
    _converge(host, state)
    changed = replace(state, subnets=(replace(SUBNETS["local"], dns=("9.9.9.9",)),))
    steps = _converge(host, changed)
    assert [type(x) for x in steps] == [s.StopDnsmasq, s.StartDnsmasq]
    assert steps[0] == s.StopDnsmasq(NETS["local"].id, steps[0].pid, purge=False)  # type: ignore[union-attr]


def test_dead_dnsmasq_is_started_again() -> None:
    host = _fake()
    state = _state(("local",))
    _converge(host, state)
    nid = NETS["local"].id
    host.dhcp[nid] = replace(host.dhcp[nid], pid=None, argv=None)
    assert [type(x) for x in _converge(host, state)] == [s.StartDnsmasq]


def test_floating_ip_disassociation_removes_address_and_nat() -> None:
    host = _fake()
    _converge(host, FULL)
    without = replace(FULL, routers=(replace(ROUTER, floating_ips=()),))
    steps = _converge(host, without)
    assert s.DeleteAddress(router_namespace("router-1"), router_gateway_name("rgw-port-id-0"), "192.0.2.20/32") in steps
    assert any(isinstance(x, s.ApplyNftRuleset) and x.netns == router_namespace("router-1") for x in steps)


def test_router_without_gateway_has_no_nat_table() -> None:
    host = _fake()
    _converge(host, FULL)
    steps = _converge(host, replace(FULL, routers=(replace(ROUTER, gateway=None, floating_ips=()),)))
    assert s.DeleteNftTables(router_namespace("router-1"), ("ip hvd_nat",)) in steps
    assert s.DeleteLink(router_gateway_name("rgw-port-id-0"), router_namespace("router-1")) in steps


def test_remote_port_moving_host_updates_fdb_only() -> None:
    host = _fake()
    state = _state(("vxlan",))
    _converge(host, state)
    moved = tuple(replace(p, host="h3") if p.host == "h2" else p for p in state.ports)
    state2 = replace(state, ports=moved, vteps=(*state.vteps, RemoteVtep("h3", "172.16.0.3")))
    steps = _converge(host, state2)
    assert {type(x) for x in steps} <= {s.AddFdb, s.DeleteFdb}
    assert s.AddFdb("vxlan-1001", "00:00:00:00:00:00", "172.16.0.3") in steps
    assert s.DeleteFdb("vxlan-1001", "00:00:00:00:00:00", "172.16.0.2") in steps


def test_vxlan_with_wrong_local_ip_is_recreated_with_its_fdb() -> None:
    host = _fake()
    state = _state(("vxlan",))
    _converge(host, state)
    steps = _converge(host, replace(state, local_vtep=LocalVtep("172.16.0.9", UNDERLAY)))
    assert steps[0] == s.DeleteLink("vxlan-1001")
    assert any(isinstance(x, s.CreateVxlan) and x.local_ip == "172.16.0.9" for x in steps)
    assert any(isinstance(x, s.AddFdb) for x in steps)


def test_half_created_veth_is_repaired() -> None:
    host = _fake()
    state = _state(("local",))
    _converge(host, state)
    ns = dhcp_namespace(NETS["local"].id)
    host.namespaces[ns].pop(dhcp_device_name("dhcp-local-port-id"))  # the peer vanished
    steps = _converge(host, state)
    assert s.DeleteLink(tap_name("dhcp-local-port-id")) in steps
    assert any(isinstance(x, s.CreateVeth) for x in steps)
    assert any(isinstance(x, s.StartDnsmasq) for x in steps), "dnsmasq must bind the new device"


def test_bridge_without_netfilter_flag_is_fixed() -> None:
    host = _fake()
    state = _state(("local",))
    _converge(host, state)
    br = NETS["local"].bridge
    host.links[br] = replace(host.links[br], bridge_nf_call=False)
    assert _converge(host, state) == [s.SetBridgeNetfilter(br)]


def test_vm_tap_is_plugged_only_once_it_exists() -> None:
    state = _state(("local",))
    host = FakeHost((UNDERLAY,))
    steps = _converge(host, state)
    assert not any(isinstance(x, s.SetMaster) and x.name.startswith("tapvm") for x in steps)
    tap = tap_name("vm0-local-port-id")
    host.links[tap] = ObservedLink(tap, kind="tun")
    assert _converge(host, state) == [s.SetMaster(tap, NETS["local"].bridge), s.SetUp(tap)]


def test_vlan_network_on_kernel_without_8021q_raises_clear_error() -> None:
    vlan = NetworkSpec("eeeeeeee-0000", "vlan", segmentation_id=100, physical_nic=NIC)
    state = HostNetworkState(host=HOST, networks=(vlan,))
    steps = plan_host(state, FakeHost((NIC,)).observed())
    assert s.CreateVlan("eth1.100", NIC, 100, 1500) in steps
    with pytest.raises(KernelFeatureMissing, match=r"802\.1Q"):
        FakeHost((NIC,), vlan_supported=False).apply(steps)
    host = FakeHost((NIC,))
    _converge(host, state)
    assert host.observed().links["eth1.100"].master == vlan.bridge
    removal = _converge(host, HostNetworkState(host=HOST))
    assert s.DeleteLink("eth1.100") in removal and s.DeleteLink(NIC) not in removal


def test_vxlan_needs_a_local_vtep() -> None:
    with pytest.raises(ValueError, match="local_vtep"):
        plan_host(replace(_state(("vxlan",)), local_vtep=None), ObservedDevices())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(sorted(NETS)), unique=True),
            st.integers(min_value=0, max_value=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_sequence_of_states_converges_idempotently(sequence: list[tuple[list[str], int, bool]]) -> None:
    host = _fake()
    for keys, n, router in sequence:
        state = _state(tuple(sorted(keys)), n=n, router=router)
        _converge(host, state)
        fresh = _fake()
        _converge(fresh, state)
        assert set(host.observed().links) == set(fresh.observed().links)
        assert set(host.observed().namespaces) == set(fresh.observed().namespaces)
        assert host.observed().fdb == fresh.observed().fdb


# -- renderers --------------------------------------------------------------------------


def test_dnsmasq_argv_serves_static_leases_without_dns() -> None:
    sub = SubnetSpec(
        "s1",
        "n1",
        "10.0.0.0/24",
        "10.0.0.1",
        dns=("1.1.1.1", "8.8.8.8"),
        host_routes=(HostRoute("10.9.0.0/16", "10.0.0.254"),),
        allocation_pools=(AllocationPool("10.0.0.10", "10.0.0.99"),),
    )
    off = SubnetSpec("s2", "n1", "10.0.1.0/24", dhcp_enabled=False)
    argv = dnsmasq_argv("ns-abc", [sub, off], dhcp_paths("/d", "n1"), user="dnsmasq")
    assert argv[0] == "dnsmasq"
    for expected in (
        "--no-hosts",
        "--no-resolv",
        "--strict-order",
        "--bind-interfaces",
        "--interface=ns-abc",
        "--except-interface=lo",
        "--port=0",
        "--pid-file=/d/n1/pid",
        "--dhcp-hostsfile=/d/n1/host",
        "--dhcp-leasefile=/d/n1/leases",
        "--user=dnsmasq",
        "--dhcp-range=set:subnet-s1,10.0.0.0,static,255.255.255.0,86400s",
        "--dhcp-option=tag:subnet-s1,option:router,10.0.0.1",
        "--dhcp-option=tag:subnet-s1,option:dns-server,1.1.1.1,8.8.8.8",
        "--dhcp-option=tag:subnet-s1,option:classless-static-route,10.9.0.0/16,10.0.0.254,0.0.0.0/0,10.0.0.1",
    ):
        assert expected in argv
    assert not any("10.0.1.0" in a for a in argv), "DHCP-disabled subnets are not served"


def test_hosts_file_lists_every_port_but_the_dhcp_port() -> None:
    sub4 = SubnetSpec("s4", "n", "10.0.0.0/24")
    sub6 = SubnetSpec("s6", "n", "2001:db8::/64")
    ports = [
        PortSpec("b", "n", "fa:16:3e:00:00:02", (FixedIp("s4", "10.0.0.3"), FixedIp("s6", "2001:db8::3"))),
        PortSpec("a", "n", "fa:16:3e:00:00:01", (FixedIp("s4", "10.0.0.2"),), hostname="vm-a"),
        PortSpec("dhcp", "n", "fa:16:3e:00:00:03", (FixedIp("s4", "10.0.0.4"),)),
    ]
    assert render_hosts(ports, [sub4, sub6], exclude="dhcp") == (
        "fa:16:3e:00:00:01,vm-a,10.0.0.2\n"
        "fa:16:3e:00:00:02,host-10-0-0-3,10.0.0.3\n"
        "fa:16:3e:00:00:02,host-2001-db8--3,[2001:db8::3]\n"
    )


@pytest.mark.parametrize(
    ("rule", "verdict", "text"),
    [
        (SecurityGroupRuleSpec("egress"), "return", "meta nfproto ipv4 return"),
        (
            SecurityGroupRuleSpec("ingress", protocol="tcp", port_min=22, port_max=22, remote_cidr="10.0.0.0/8"),
            "accept",
            "meta nfproto ipv4 meta l4proto tcp ip saddr 10.0.0.0/8 th dport 22 accept",
        ),
        (
            SecurityGroupRuleSpec("ingress", "IPv6", protocol="icmp", remote_group_id="g1"),
            "accept",
            "meta nfproto ipv6 meta l4proto ipv6-icmp ip6 saddr @sg-g1-v6 accept",
        ),
        (
            SecurityGroupRuleSpec("egress", protocol="udp", port_min=1000, port_max=2000),
            "return",
            "meta nfproto ipv4 meta l4proto udp th dport 1000-2000 return",
        ),
        (
            SecurityGroupRuleSpec("egress", protocol="tcp", remote_group_id="g2"),
            "return",
            "meta nfproto ipv4 meta l4proto tcp ip daddr @sg-g2-v4 return",
        ),
    ],
)
def test_render_rule(rule: SecurityGroupRuleSpec, verdict: str, text: str) -> None:
    assert render_rule(rule, verdict) == text


def test_security_ruleset_protects_ports_and_fills_member_sets() -> None:
    ports = _ports("local", 3)
    local = [p for p in ports if p.host == HOST and p.is_compute]
    ruleset = render_security_ruleset(local, [GROUP, WEB], members=ports)
    assert ruleset is not None
    text = ruleset.text
    assert ruleset.tables == ("bridge hvd_sg", "inet hvd_sg")
    assert text.count(f'comment "hvd:{ruleset.tag}"') == 2
    # Every VM of the group, remote ones too, is a member; the DHCP port is not.
    assert "elements = { 10.1.0.10, 10.1.0.11, 10.1.0.12 }" in text
    for port in local:
        assert f'"{port.tap}" : jump from-' in text
        assert f"ether saddr != {port.mac} drop" in text
        assert f"ip saddr != {port.fixed_ips[0].ip} drop" in text
    assert "udp sport 67 udp dport 68 drop" in text and "ct state established,related accept" in text
    assert "meta l4proto tcp th dport 22 accept" in text
    assert render_security_ruleset(local, [GROUP, WEB], members=ports) == ruleset, "rendering is deterministic"
    unprotected = [replace(p, port_security_enabled=False) for p in local]
    assert render_security_ruleset(unprotected, [GROUP]) is None


def test_security_ruleset_changes_with_rules_only() -> None:
    port = _ports("local", 1)[1]
    a = render_security_ruleset([port], [GROUP])
    b = render_security_ruleset([port], [replace(GROUP, rules=(*GROUP.rules, SecurityGroupRuleSpec("ingress")))])
    assert a is not None and b is not None and a.tag != b.tag


def test_router_nat_snat_and_floating_ips() -> None:
    nat = render_router_nat(ROUTER, "qg-x", ["10.1.0.0/24", "2001:db8::/64"])
    assert nat is not None
    assert "ip daddr 192.0.2.20 dnat to 10.1.0.10" in nat.text
    assert 'oifname "qg-x" ip saddr 10.1.0.10 snat to 192.0.2.20' in nat.text
    assert 'oifname "qg-x" ip saddr 10.1.0.0/24 snat to 192.0.2.10' in nat.text
    assert "2001:db8" not in nat.text
    # The floating IP's own SNAT must win over the router-wide one.
    assert nat.text.index("snat to 192.0.2.20") < nat.text.index("snat to 192.0.2.10")
    assert render_router_nat(replace(ROUTER, gateway=None), "qg-x", []) is None


# -- per-unit convergence -------------------------------------------------------------


def test_every_step_of_a_plan_has_the_unit_of_its_network_router_or_ruleset() -> None:
    planned = plan_units(FULL, _fake().observed())
    assert [step for _, step in planned] == plan_host(FULL, _fake().observed())
    units = {unit for unit, _ in planned}
    assert units == {network_unit(n.id) for n in NETS.values()} | {router_unit("router-1"), SECURITY_UNIT}
    for unit, step in planned:
        if isinstance(step, s.StartDnsmasq):
            assert unit == network_unit(step.network_id)
        if isinstance(step, s.ApplyNftRuleset) and step.netns is None:
            assert unit == SECURITY_UNIT
    # a removed network's leftovers stay together under its unit
    host = _fake()
    _converge(host, FULL)
    leftover = plan_units(_state(("vxlan", "flat", "vxlan2"), router=False), host.observed())
    assert (network_unit(NETS["local"].id), s.DeleteNamespace(dhcp_namespace(NETS["local"].id))) in leftover


async def test_a_network_whose_dnsmasq_fails_stops_no_other_network_nor_the_ruleset() -> None:
    # dnsmasq refuses an IPv6 DNS server in an IPv4 subnet (the fake host refuses it the same way)
    bad = replace(SUBNETS["local"], dns=("2001:db8::53",))
    state = replace(FULL, subnets=tuple(bad if sub.id == bad.id else sub for sub in FULL.subnets))
    host = _fake()

    async def one(step: s.Step) -> None:
        host.apply([step])

    report = await apply_isolated(plan_units(state, host.observed()), one)
    local = NETS["local"].id
    assert set(report.failed) == {network_unit(local)}
    assert "bad IP address" in str(report.failed[network_unit(local)])
    obs = host.observed()
    assert obs.dhcp[local].pid is None, "the failing network's dnsmasq is not running"
    assert all(obs.dhcp[NETS[k].id].pid is not None for k in ("vxlan", "vxlan2")), "other networks converged"
    assert set(obs.nft_tags) == {"bridge hvd_sg", "inet hvd_sg"}, "security groups reached the host"
    assert obs.namespaces[router_namespace("router-1")].nft_tags["ip hvd_nat"], "the router converged"
    # the next converge retries only what is left: the failing network's dnsmasq
    again = plan_units(state, obs)
    assert {unit for unit, _ in again} == {network_unit(local)}
    # once the subnet is fixed, the network converges and nothing is left
    fixed = await apply_isolated(plan_units(FULL, host.observed()), one)
    assert not fixed.failed and plan_host(FULL, host.observed()) == []
