"""Host aggregates in placement, on pure data and in the catalog: the AggregateInstanceExtraSpecs
filter, zones given by aggregates, the soft (anti-)affinity weigher, and the apply rules."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from hvd.catalog import all_commands  # noqa: F401 - registers the handlers
from hvd.catalog.cmd_aggregates import AggregateCreate, AggregateDelete, AggregateHost, AggregateUpdate
from hvd.catalog.cmd_hosts import HostRegister
from hvd.catalog.commands import Command, encode
from hvd.catalog.db import connect
from hvd.catalog.state import CatalogState, decode_result
from hvd.errors import BadRequest, Conflict
from hvd.scheduler.filters import aggregate_instance_extra_specs_filter as agg_filter
from hvd.scheduler.model import HostState, RequestSpec
from hvd.scheduler.placement import read_host_states
from hvd.scheduler.select import Weights, select

HOST = HostState(name="h1", availability_zone="nova", enabled=True, up=True, vcpus_capacity=8, vcpus_claimed=0,
                 memory_capacity_mb=4096, memory_claimed_mb=0, disk_capacity_gb=40, disk_claimed_gb=0,
                 instance_count=0, hypervisor_type="QEMU", arch="x86_64",
                 aggregate_metadata={"ssd": frozenset({"true"}), "tier": frozenset({"gold,silver"})})
REQ = RequestSpec(instance_id="i1", vcpus=1, memory_mb=512, disk_gb=1)
T = TypeVar("T")


@pytest.mark.parametrize("specs", [{}, {"ssd": "true"}, {"aggregate_instance_extra_specs:ssd": "true"},
                                   {"tier": "silver"}, {"tier": "bronze,gold"}, {"hw:cpu_policy": "dedicated"},
                                   {"capabilities:arch": "x86_64"}])
def test_matching_or_foreign_extra_specs_pass(specs: dict[str, str]) -> None:
    assert agg_filter(HOST, replace(REQ, extra_specs=specs)) is None


def test_a_missing_or_other_value_is_refused_with_the_reason() -> None:
    assert agg_filter(HOST, replace(REQ, extra_specs={"ssd": "false"})) == \
        "aggregate metadata ssd=true does not match false"
    assert agg_filter(HOST, replace(REQ, extra_specs={"aggregate_instance_extra_specs:gpu": "1"})) == \
        "no aggregate of the host sets gpu (flavor wants 1)"


def _hosts() -> list[HostState]:
    return [replace(HOST, name=n, aggregate_metadata={}) for n in ("h1", "h2", "h3")]


@pytest.mark.parametrize(("policy", "expected"), [("soft-anti-affinity", "h2"), ("soft-affinity", "h3")])
def test_soft_group_policies_prefer_but_never_refuse(policy: str, expected: str) -> None:
    hosts = _hosts()
    hosts[0] = replace(hosts[0], memory_claimed_mb=0)
    req = replace(REQ, group_policy=policy, group_hosts=frozenset({"h1", "h3"}) if policy == "soft-anti-affinity"
                  else frozenset({"h3"}))
    selection = select(hosts, req, ["ComputeFilter", "RamFilter"], Weights())
    assert selection.ranked[0][0].name == expected
    assert len(selection.ranked) == 3  # a preference: every host stays a candidate
    alone = select(hosts[:1], replace(req, group_hosts=frozenset({"h1"})), ["ComputeFilter"], Weights())
    assert [h.name for h, _ in alone.ranked] == ["h1"]


class Applier:
    """Commands applied one by one to an in-memory catalog; typed errors raised as apply returns them."""

    def __init__(self) -> None:
        self.state = CatalogState(connect(":memory:"))
        self.index = 0

    def __call__(self, cmd: Command) -> dict[str, object]:
        self.index += 1
        return decode_result(self.state.apply(self.index, encode(cmd)))

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self.state.conn)


def test_aggregates_give_zones_and_metadata_and_keep_one_zone_per_host() -> None:
    apply = Applier()
    for name in ("h1", "h2"):
        apply(HostRegister(name=name, node_id=name, availability_zone="nova", vcpus=4, memory_mb=4096, disk_gb=40,
                           reserved_vcpus=0, reserved_memory_mb=0, reserved_disk_gb=0, cpu_ratio=1, ram_ratio=1,
                           disk_ratio=1, hypervisor_type="QEMU", hypervisor_version="1", arch="x86_64",
                           cpu_model="x", api_url="http://x", updated_at="t"))
    apply(AggregateCreate(id="a1", name="fast", availability_zone="az1", metadata={"ssd": "true"}, created_at="t"))
    apply(AggregateCreate(id="a2", name="other-zone", availability_zone="az2", created_at="t"))
    apply(AggregateCreate(id="a3", name="gpu", metadata={"gpu": "1"}, created_at="t"))
    apply(AggregateHost(id="a1", host="h1", add=True, updated_at="t"))
    apply(AggregateHost(id="a3", host="h1", add=True, updated_at="t"))
    with pytest.raises(Conflict, match="one zone only"):
        apply(AggregateHost(id="a2", host="h1", add=True, updated_at="t"))
    with pytest.raises(Conflict, match="already"):
        apply(AggregateHost(id="a1", host="h1", add=True, updated_at="t"))
    with pytest.raises(Conflict, match="still has hosts"):
        apply(AggregateDelete(id="a1"))
    with pytest.raises(BadRequest, match="no metadata key"):
        apply(AggregateUpdate(id="a1", unset=["nope"], updated_at="t"))
    rows = {r["name"]: r for r in apply.read(read_host_states)}
    assert rows["h1"]["availability_zone"] == "az1" and rows["h2"]["availability_zone"] == "nova"
    assert rows["h1"]["aggregate_metadata"] == {"ssd": frozenset({"true"}), "gpu": frozenset({"1"})}
    apply(AggregateHost(id="a1", host="h1", add=False, updated_at="t"))
    apply(AggregateDelete(id="a1"))
    rows = {r["name"]: r for r in apply.read(read_host_states)}
    assert rows["h1"]["availability_zone"] == "nova" and rows["h1"]["aggregate_metadata"] == {"gpu": frozenset({"1"})}
