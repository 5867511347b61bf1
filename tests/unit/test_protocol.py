"""The catalog protocol level (hvd.catalog.protocol): what each command needs, what a mixed-version
cluster may use, the refusal naming who is behind, the gate on the proposer and on the leader, and
the wire forms of released levels (tests/fixtures/protocol/)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

import hvd
import hvd.catalog.all_commands  # registers every command type
from hvd.catalog import protocol
from hvd.catalog.cmd_resources import FlavorCreate
from hvd.catalog.cmd_volumes import VolumeTypeCreate
from hvd.catalog.commands import PROPOSAL_ID_BYTES, Command, command_class, encode, identified, registered_types
from hvd.catalog.protocol import OLDEST, PROTOCOL, RELEASES, ClusterLevel, MemberLevel, cluster_level
from hvd.catalog.service import Catalog
from hvd.cluster.coordinator import RaftCoordinator
from hvd.cluster.gossip.core import MemberEvent
from hvd.cluster.gossip.report import ResourceReport, parse_report
from hvd.cluster.gossip.service import MemberView
from hvd.cluster.member import open_raft_coordinator
from hvd.cluster.protocol_gate import ProtocolGate
from hvd.config import ClusterSection
from hvd.errors import BadRequest, UpgradeInProgress
from tests.fixtures.protocol.make_fixture import wire_form

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "protocol").glob("level-*.json"))


class Widget(Command):
    """A level-2 command with a level-3 field (never registered: the pure rules only)."""

    since = 2
    fields_since = {"colour": 3}
    type: Literal["widget.create"] = "widget.create"
    name: str
    colour: str = ""


class OldWidget(Command):
    """How a level-2 member's build declares the same command."""

    type: Literal["widget.create"] = "widget.create"
    name: str


def cluster(**levels: int | None) -> ClusterLevel:
    heard = {n: MemberLevel(n, lvl, "0.1.0" if lvl == 1 else "0.2.0") for n, lvl in levels.items() if lvl is not None}
    return cluster_level(levels, heard)


# ------------------------------------------------------------------ the commands of this build

def test_every_command_type_has_a_level_this_build_applies() -> None:
    for type_name in registered_types():
        cls = command_class(type_name)
        assert cls is not None
        assert OLDEST <= cls.since <= PROTOCOL, f"{type_name}: since = {cls.since}, this build is at {PROTOCOL}"
        for field, since in cls.fields_since.items():
            assert cls.since < since <= PROTOCOL, f"{type_name}.{field}: fields_since {since}"
            assert not cls.model_fields[field].is_required(), f"{type_name}.{field}: a later field needs a default"


def test_every_level_names_its_release_and_this_build_is_the_newest() -> None:
    assert set(RELEASES) == set(range(OLDEST, PROTOCOL + 1))
    assert RELEASES[PROTOCOL] == hvd.__version__


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_released_commands_keep_their_wire_form(fixture: Path) -> None:
    """An older member proposes these commands and decodes only these fields (extra="forbid"):
    a released command may gain a field only through fields_since, and never lose one."""
    level = int(fixture.stem.removeprefix("level-"))
    released = json.loads(fixture.read_text())
    problems = []
    for type_name, form in released.items():
        cls = command_class(type_name)
        if cls is None:
            problems.append(f"{type_name} was released at protocol {level}: members at that level still propose it")
        elif wire_form(cls, level) != form:
            problems.append(f"{type_name} changed its fields since protocol {level} ({RELEASES[level]}): older"
                            f" members would reject it; give a new optional field fields_since = {{name: {PROTOCOL}}}")
    for type_name in registered_types():
        cls = command_class(type_name)
        if cls is not None and type_name not in released and cls.since <= level:
            problems.append(f"{type_name} is newer than protocol {level} ({RELEASES[level]}, {fixture.name}): set"
                            f" `since = {PROTOCOL}` on {cls.__name__} so no member proposes it while an older one runs")
    assert not problems, "\n".join(problems)


def test_the_previous_level_is_kept_as_a_fixture() -> None:
    assert f"level-{PROTOCOL - 1}.json" in {f.name for f in FIXTURES}, (
        "raising PROTOCOL releases the previous level: python -m tests.fixtures.protocol.make_fixture N"
        " from that release's checkout")


# ------------------------------------------------------------------ pure rules

def test_a_later_field_counts_only_when_set_and_stays_off_the_wire_at_its_default() -> None:
    plain, coloured = Widget(name="w"), Widget(name="w", colour="red")
    assert protocol.required_level(plain) == 2 and protocol.required_level(coloured) == 3
    assert "colour" not in json.loads(encode(plain))
    assert OldWidget.model_validate_json(encode(plain)).name == "w"  # an older member decodes it
    with pytest.raises(ValidationError, match="colour"):
        OldWidget.model_validate_json(encode(coloured))  # which is why it is held back until level 3


def test_usable_level_is_the_lowest_member_and_one_not_heard_from_counts_as_the_oldest() -> None:
    assert cluster(n1=2, n2=2, n3=2).usable == 2
    assert cluster(n1=2, n2=2, n3=1).usable == 1
    assert cluster(n1=2, n2=2, n3=None).usable == OLDEST
    assert cluster_level([], {}).usable == OLDEST
    # a host that advertises more than the deciding one's build is capped at what the decider applies
    assert cluster_level(["a", "b"], {"a": MemberLevel("a", 3), "b": MemberLevel("b", 3)}, ceiling=2).usable == 2
    # gossip about hosts that are not Raft members does not count
    assert cluster_level(["a"], {"a": MemberLevel("a", 2), "x": MemberLevel("x", 1)}).usable == 2


def test_the_refusal_names_the_command_the_level_and_every_member_behind() -> None:
    view = cluster(hv1=2, hv2=None, hv3=1)
    err = protocol.refusal("widget.create", 2, view)
    assert isinstance(err, UpgradeInProgress) and err.status == 409
    assert err.message == ("widget.create needs protocol 2; hv2 has not been heard from yet (counted as protocol 1),"
                           " hv3 runs hvd 0.1.0 (protocol 1): finish the upgrade first")
    assert [b["node_id"] for b in err.details["behind"]] == ["hv2", "hv3"]
    assert protocol.refusal("widget.create", 2, cluster(hv1=2, hv2=2)) is None
    protocol.check(FlavorCreate(id="f", name="f", vcpus=1, ram_mb=64, disk_gb=1, created_at="t"), view)  # level 1
    with pytest.raises(UpgradeInProgress, match=r"widget\.create needs protocol 2; hv3 runs"):
        protocol.check(Widget(name="w"), cluster(hv1=2, hv3=1))


def test_an_old_hosts_report_without_the_field_counts_as_level_one() -> None:
    old = {"hvd_version": "0.1.0", "vcpus_total": 4, "api_url": "http://h:1"}
    assert parse_report(old).protocol == 1 and parse_report(old).node_id == ""
    new = ResourceReport(hvd_version="0.2.0", protocol=2, node_id="n2").wire()
    assert parse_report({**new, "from_the_future": 1}).protocol == 2  # a newer member may report more


# ------------------------------------------------------------------ the gate (adapter)

class FakeGossip:
    def __init__(self, reports: dict[str, ResourceReport]) -> None:
        self.reports = reports
        self.callbacks: list[Callable[[MemberEvent], None]] = []

    def members(self) -> list[MemberView]:
        return [MemberView(name, "alive", 1, r, 0.0, ("127.0.0.1", 1)) for name, r in self.reports.items()]

    def report_of(self, name: str) -> ResourceReport | None:
        return self.reports.get(name)

    def on_change(self, callback: Callable[[MemberEvent], None]) -> None:
        self.callbacks.append(callback)

    def report(self, name: str, report: ResourceReport) -> None:
        self.reports[name] = report
        for callback in self.callbacks:
            callback(MemberEvent(name, "alive", "alive", 2, True))


def gate(members: set[str], reports: dict[str, ResourceReport], advertised: int = PROTOCOL) -> ProtocolGate:
    g = ProtocolGate("n1", advertised, lambda: members, hvd_version="0.2.0")
    g.use_gossip(FakeGossip(reports))
    return g


def test_the_gate_maps_gossip_names_to_raft_ids_and_counts_learners() -> None:
    reports = {"host-a": ResourceReport(hvd_version="0.2.0", protocol=2, node_id="n2"),  # reports its node id
               "n3": ResourceReport(hvd_version="0.1.0")}  # an old build: named like its node id
    view = gate({"n1", "n2", "n3"}, reports).cluster_level()
    assert view.usable == 1
    assert [(m.node_id, m.protocol, m.hvd_version) for m in view.members] == [
        ("n1", 2, "0.2.0"), ("n2", 2, "0.2.0"), ("n3", 1, "0.1.0")]
    assert gate({"n1", "n2"}, reports).cluster_level().usable == 2
    assert gate({"n1", "n2", "n4"}, reports).cluster_level().behind(2)[0].describe() == (
        "n4 has not been heard from yet (counted as protocol 1)")
    # this host's own drill setting counts before gossip says anything
    assert ProtocolGate("n1", 1, lambda: {"n1"}).cluster_level().usable == 1


def _identified(body: bytes) -> bytes:
    return identified(os.urandom(PROPOSAL_ID_BYTES), body)


def test_the_leader_refuses_a_forwarded_type_it_does_not_know_and_a_malformed_command() -> None:
    g = gate({"n1"}, {})
    with pytest.raises(UpgradeInProgress, match=r"future\.thing is not known to the leader: n1 runs hvd 0\.2\.0"):
        g.check_encoded(_identified(b'{"type": "future.thing", "x": 1}'))
    with pytest.raises(BadRequest, match="malformed command"):
        g.check_encoded(_identified(b'{"type": "flavor.create", "name": 5}'))
    g.check_encoded(_identified(encode(FlavorCreate(id="f", name="f", vcpus=1, ram_mb=64, disk_gb=1,
                                                    created_at="t"))))


async def test_a_held_back_command_is_appended_nowhere_on_the_proposer_or_the_leader(tmp_path: Path) -> None:
    catalog = Catalog.open_raft(tmp_path / "catalog.db", lambda db, state: open_raft_coordinator(
        ClusterSection(), "n1", tmp_path / "raft.db", db, state))
    coordinator = catalog.coordinator
    assert isinstance(coordinator, RaftCoordinator)
    gossip = FakeGossip({"n3": ResourceReport(hvd_version="0.1.0", protocol=1)})
    coordinator.gate = ProtocolGate("n1", PROTOCOL, lambda: {"n1", "n3"}, hvd_version="0.2.0")
    coordinator.gate.use_gossip(gossip)  # n3: a learner that still runs 0.1.0
    await coordinator.start()
    try:
        cmd = VolumeTypeCreate(id="vt-1", name="fast", created_at="2026-12-01T00:00:00Z")
        last = coordinator.driver.node.log.last_index()
        with pytest.raises(UpgradeInProgress, match=r"^volume_type\.create needs protocol 2; n3 runs hvd 0\.1\.0"):
            await catalog.propose(cmd)  # the proposing member
        with pytest.raises(UpgradeInProgress, match=r"n3 runs hvd 0\.1\.0"):
            await coordinator.propose_local(_identified(encode(cmd)))  # the leader, for a forwarded one
        assert coordinator.driver.node.log.last_index() == last
        await catalog.propose(FlavorCreate(id="f", name="f", vcpus=1, ram_mb=64, disk_gb=1, created_at="t"))
        gossip.report("n3", ResourceReport(hvd_version="0.2.0", protocol=2))  # n3 upgraded
        assert (await catalog.propose(cmd))["id"] == "vt-1"
    finally:
        await coordinator.stop()
        catalog.close()


async def test_a_member_not_heard_from_yet_is_waited_for_and_only_the_proposer_counts_it(tmp_path: Path) -> None:
    catalog = Catalog.open_raft(tmp_path / "catalog.db", lambda db, state: open_raft_coordinator(
        ClusterSection(), "n1", tmp_path / "raft.db", db, state))
    coordinator = catalog.coordinator
    assert isinstance(coordinator, RaftCoordinator)
    gossip = FakeGossip({})
    coordinator.gate = ProtocolGate("n1", PROTOCOL, lambda: {"n1", "n2"})
    coordinator.gate.use_gossip(gossip)  # n2 just started: gossip has not heard of it yet
    await coordinator.start()
    try:
        cmd = VolumeTypeCreate(id="vt-1", name="fast", created_at="2026-12-01T00:00:00Z")
        # the leader does not hold a forwarded proposal back for a member only the proposer has heard
        coordinator.gate.check_encoded(_identified(encode(cmd)))
        with pytest.raises(UpgradeInProgress, match="n2 has not been heard from yet"):
            coordinator.gate.check(cmd)
        proposal = asyncio.create_task(catalog.propose(cmd))  # waits for gossip instead of refusing at once
        await asyncio.sleep(0.3)
        assert not proposal.done()
        gossip.report("n2", ResourceReport(hvd_version="0.2.0", protocol=2, node_id="n2"))
        assert (await asyncio.wait_for(proposal, 5))["id"] == "vt-1"
    finally:
        await coordinator.stop()
        catalog.close()
