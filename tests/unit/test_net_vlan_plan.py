"""The VLAN part of the host network plan on pure data: this build machine's kernel has no 802.1Q
(the lab test of VLAN links skips here for that reason), so what hvd would ask such a kernel to do
is checked against the FakeHost, which does have it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvd.net import steps as s
from hvd.net.fake import FakeHost
from hvd.net.model import HostNetworkState, NetworkSpec, vlan_name
from hvd.net.plan import plan_host
from hvd.net.proc import KernelFeatureMissing
from hvd.net.state import ObservedLink

HOST = "h1"
NIC = "eth1"
V100 = NetworkSpec("eeeeeeee-0000-0000-0000-000000000100", "vlan", segmentation_id=100, physical_nic=NIC)
V200 = NetworkSpec("eeeeeeee-0000-0000-0000-000000000200", "vlan", segmentation_id=200, physical_nic=NIC, mtu=1400)
FLAT = NetworkSpec("ffffffff-0000-0000-0000-000000000001", "flat", physical_nic=NIC)


def converge(host: FakeHost, *nets: NetworkSpec) -> list[s.Step]:
    state = HostNetworkState(host=HOST, networks=nets)
    steps = plan_host(state, host.observed())
    host.apply(steps)
    assert plan_host(state, host.observed()) == [], "a plan applied must leave nothing to do"
    return steps


def test_each_vlan_gets_its_own_sub_interface_on_its_own_bridge_with_its_mtu() -> None:
    host = FakeHost((NIC,))
    steps = converge(host, V100, V200)
    assert s.CreateVlan("eth1.100", NIC, 100, 1500) in steps
    assert s.CreateVlan("eth1.200", NIC, 200, 1400) in steps
    links = host.observed().links
    assert links["eth1.100"].master == V100.bridge and links["eth1.100"].vlan_id == 100
    assert links["eth1.200"].master == V200.bridge and links["eth1.200"].vlan_id == 200
    assert links[V200.bridge].mtu == 1400
    assert links[NIC].master is None  # the trunk NIC itself is never bridged for a VLAN


def test_vlan_and_flat_share_a_nic() -> None:
    host = FakeHost((NIC,))
    converge(host, V100, FLAT)
    links = host.observed().links
    assert links[NIC].master == FLAT.bridge  # untagged traffic: the flat network
    assert links["eth1.100"].master == V100.bridge  # tagged 100: the VLAN network


def test_removing_one_vlan_deletes_only_its_sub_interface() -> None:
    host = FakeHost((NIC,))
    converge(host, V100, V200)
    steps = converge(host, V200)
    assert s.DeleteLink("eth1.100") in steps
    assert not any(isinstance(x, s.DeleteLink) and x.name in ("eth1.200", NIC) for x in steps)
    assert vlan_name(NIC, 200) in host.observed().links


def test_a_sub_interface_with_the_wrong_vlan_id_is_replaced() -> None:
    host = FakeHost((NIC,))
    host.links["eth1.100"] = ObservedLink("eth1.100", kind="vlan", vlan_id=999, up=True)
    steps = converge(host, V100)
    assert steps.index(s.DeleteLink("eth1.100")) < steps.index(s.CreateVlan("eth1.100", NIC, 100, 1500))
    assert host.observed().links["eth1.100"].vlan_id == 100


def test_kernel_without_8021q_names_the_missing_module() -> None:
    steps = plan_host(HostNetworkState(host=HOST, networks=(V100,)), FakeHost((NIC,)).observed())
    with pytest.raises(KernelFeatureMissing, match=r"802\.1Q VLAN support \(module 8021q\)"):
        FakeHost((NIC,), vlan_supported=False).apply(steps)


def test_vlan_ids_outside_the_range_are_refused() -> None:
    for vid in (0, 4095):
        with pytest.raises(ValueError, match="outside 1-4094"):
            replace(V100, segmentation_id=vid)
    with pytest.raises(ValueError, match="needs a physical_nic"):
        replace(V100, physical_nic=None)
