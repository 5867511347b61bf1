"""select() on pure data: the filter chain and its trace, each weigher, multipliers and the
normalisation of weights to [0, 1]."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvd.errors import NoValidHost
from hvd.scheduler.model import HostState, RequestSpec
from hvd.scheduler.select import Weights, _normalise, select, select_or_raise


def host(name: str, *, ram: int = 4096, disk: int = 40, vcpus: int = 8, count: int = 0, **kw: object) -> HostState:
    """A host with `ram`/`disk`/`vcpus` free (nothing claimed) and `count` instances."""
    base = HostState(
        name=name, availability_zone="nova", enabled=True, up=True,
        vcpus_capacity=vcpus, vcpus_claimed=0, memory_capacity_mb=ram, memory_claimed_mb=0,
        disk_capacity_gb=disk, disk_claimed_gb=0, instance_count=count, hypervisor_type="QEMU", arch="x86_64",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


REQ = RequestSpec(instance_id="i1", vcpus=1, memory_mb=512, disk_gb=1)
ALL = ["RetryFilter", "AvailabilityZoneFilter", "RamFilter", "DiskFilter", "CoreFilter", "ComputeFilter",
       "ComputeCapabilitiesFilter", "ImagePropertiesFilter", "ServerGroupAntiAffinityFilter",
       "ServerGroupAffinityFilter"]


def names(sel: object) -> list[str]:
    return [h.name for h, _ in sel.ranked]  # type: ignore[attr-defined]


def test_normalise_like_nova() -> None:
    assert _normalise([7466.0, 3434.0]) == pytest.approx([1.0, 0.4599], abs=1e-4)
    assert _normalise([0.0, 0.0]) == [0.0, 0.0]  # nothing free anywhere: no preference
    assert _normalise([]) == []
    assert _normalise([-10.0, 0.0, 30.0]) == pytest.approx([0.0, 0.25, 1.0])  # negatives: min-max
    for values in ([5.0, 1.0, 3.0], [-3.0, -1.0], [100.0]):
        assert all(0.0 <= v <= 1.0 for v in _normalise(values))


def test_ram_weigher_spreads_by_default_and_stacks_when_negative() -> None:
    hosts = [host("a", ram=2048), host("b", ram=8192), host("c", ram=4096)]
    spread = select(hosts, REQ, ALL, Weights())
    assert names(spread) == ["b", "c", "a"]
    assert [w for _, w in spread.ranked] == pytest.approx([1.0, 0.5, 0.25])
    stack = select(hosts, REQ, ALL, Weights(ram=-1.0))
    assert names(stack) == ["a", "c", "b"]


@pytest.mark.parametrize(
    ("weights", "best"),
    [
        (Weights(ram=0.0, disk=1.0), "disk"),
        (Weights(ram=0.0, vcpu=1.0), "cpu"),
        (Weights(ram=0.0, instance_count=-1.0), "empty"),  # Nova: negative count multiplier spreads
        (Weights(ram=0.0, instance_count=1.0), "busy"),
        (Weights(), "ram"),
    ],
)
def test_each_weigher_picks_the_host_it_favours(weights: Weights, best: str) -> None:
    hosts = [
        host("ram", ram=16384, count=1),
        host("disk", disk=400, count=1),
        host("cpu", vcpus=64, count=1),
        host("empty", count=0),
        host("busy", count=9),
    ]
    assert names(select(hosts, REQ, ALL, weights))[0] == best


def test_multipliers_scale_normalised_weights() -> None:
    """Each weigher contributes multiplier × value/max, so a 2× ram multiplier outweighs a full disk one."""
    a = host("a", ram=4096, disk=10)
    b = host("b", ram=2048, disk=40)
    sel = select([a, b], REQ, ALL, Weights(ram=2.0, disk=1.0))
    assert dict((h.name, w) for h, w in sel.ranked) == pytest.approx({"a": 2.0 + 0.25, "b": 1.0 + 1.0})
    assert names(sel) == ["a", "b"]
    assert names(select([a, b], REQ, ALL, Weights(ram=1.0, disk=2.0))) == ["b", "a"]


def test_ties_break_by_name_so_placement_is_deterministic() -> None:
    assert names(select([host("z"), host("m"), host("a")], REQ, ALL, Weights())) == ["a", "m", "z"]


def test_weights_use_free_not_total() -> None:
    big_but_full = host("big", ram=65536, memory_claimed_mb=64512)  # 1024 MB free
    small_empty = host("small", ram=4096)
    assert names(select([big_but_full, small_empty], REQ, ALL, Weights())) == ["small", "big"]


def test_trace_names_the_first_failing_filter_per_host() -> None:
    hosts = [
        host("ok"),
        host("small", ram=256),
        host("off", enabled=False),
        host("far", availability_zone="az2"),
        host("tried"),
    ]
    req = replace(REQ, availability_zone="nova", tried_hosts=frozenset({"tried"}))
    sel = select(hosts, req, ALL, Weights())
    assert names(sel) == ["ok"]
    assert sel.rejected == {
        "small": "RamFilter: RAM: needs 512 MB, 256 MB free",
        "off": "ComputeFilter: compute service disabled",
        "far": "AvailabilityZoneFilter: in zone az2, not nova",
        "tried": "RetryFilter: already tried for this request",
    }


def test_only_configured_filters_run_but_compute_filter_always_does() -> None:
    hosts = [host("small", ram=256), host("down", up=False)]
    sel = select(hosts, REQ, ["CoreFilter"], Weights())
    assert names(sel) == ["small"]  # RamFilter not configured: the small host passes
    assert sel.rejected == {"down": "ComputeFilter: compute service down"}


def test_unknown_filter_name_raises() -> None:
    with pytest.raises(KeyError):
        select([host("a")], REQ, ["NoSuchFilter"], Weights())


def test_force_host_and_ignore_hosts() -> None:
    hosts = [host("a"), host("b", ram=8192), host("c")]
    forced = select(hosts, replace(REQ, force_host="a"), ALL, Weights())
    assert names(forced) == ["a"]
    assert forced.rejected == {"b": "not the forced host", "c": "not the forced host"}
    ignored = select(hosts, replace(REQ, ignore_hosts=frozenset({"b"})), ALL, Weights())
    assert names(ignored) == ["a", "c"]
    assert ignored.rejected == {"b": "excluded by the operation (e.g. migration source)"}


def test_no_valid_host_names_every_reason() -> None:
    hosts = [host("a", ram=256), host("b", up=False)]
    with pytest.raises(NoValidHost) as err:
        select_or_raise(hosts, REQ, ALL, Weights())
    assert "a: RamFilter: RAM: needs 512 MB, 256 MB free" in err.value.message
    assert "b: ComputeFilter: compute service down" in err.value.message
    with pytest.raises(NoValidHost, match="no hosts known"):
        select_or_raise([], REQ, ALL, Weights())
    assert names(select_or_raise([host("a")], REQ, ALL, Weights())) == ["a"]
