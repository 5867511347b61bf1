"""The protocol gate: holds back commands some current Raft member cannot apply (hvd.catalog.protocol).

It reads the Raft membership (who applies the log) and gossip reports (what each member advertises)
and leaves the decision to the pure functions of hvd.catalog.protocol. The coordinator asks it on
the proposing member and, for a forwarded proposal, again on the leader before appending.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Protocol

import hvd
from hvd.catalog import protocol
from hvd.catalog.commands import Command, command_class, decode, split_identified
from hvd.catalog.protocol import ClusterLevel, MemberLevel
from hvd.cluster.gossip.core import MemberEvent
from hvd.cluster.gossip.report import ResourceReport
from hvd.cluster.gossip.service import MemberView
from hvd.errors import BadRequest, UpgradeInProgress


class Reports(Protocol):
    """What the gate reads from gossip (GossipService)."""

    def members(self) -> list[MemberView]: ...

    def report_of(self, name: str) -> ResourceReport | None: ...

    def on_change(self, callback: Callable[[MemberEvent], None]) -> None: ...


class ProtocolGate:
    """``check(cmd)`` raises UpgradeInProgress when a current member could not apply ``cmd``."""

    def __init__(self, node_id: str, advertised: int, members: Callable[[], Iterable[str]],
                 hvd_version: str = hvd.__version__) -> None:
        """``advertised``: the level this host advertises (its own entry, known before gossip runs);
        ``members()``: the current Raft members (voters and learners)."""
        self.here = MemberLevel(node_id, advertised, hvd_version)
        self._members = members
        self._gossip: Reports | None = None
        # what gossip said, kept between proposals (reading every host's report for each proposal
        # costs ~10 us a host) and brought up to date host by host as gossip announces changes
        self._heard: dict[str, MemberLevel] = {}
        self._node_of: dict[str, str] = {}  # gossip name -> node id
        self._changed: set[str] = set()
        self._last: tuple[frozenset[str], ClusterLevel] | None = None  # the last answer, for the same members

    def use_gossip(self, gossip: Reports) -> None:
        """Learn the other members' levels from gossip (until then they count as not heard from)."""
        self._gossip = gossip
        self._changed.update(view.name for view in gossip.members())
        gossip.on_change(lambda event: self._changed.add(event.name))

    def heard(self) -> dict[str, MemberLevel]:
        """node id -> what it advertises, for every host gossip knows (alive or not: its last report)."""
        gossip, changed = self._gossip, self._changed
        if gossip is not None and changed:
            self._last = None
        while gossip is not None and changed:
            name = changed.pop()
            report = gossip.report_of(name)
            self._heard.pop(self._node_of.pop(name, ""), None)
            if report is not None:
                node_id = report.node_id or name  # older builds do not report a node id
                self._node_of[name] = node_id
                self._heard[node_id] = MemberLevel(node_id, report.protocol, report.hvd_version)
        self._heard[self.here.node_id] = self.here  # this host's own word, even against gossip
        return self._heard

    def cluster_level(self, heard_only: bool = False) -> ClusterLevel:
        """The usable level over the Raft members; ``heard_only`` leaves out the members this host
        has not heard from yet."""
        heard = self.heard()
        members = frozenset(m for m in self._members() if not heard_only or m in heard)
        if self._last is None or self._last[0] != members:  # (heard() forgets it on news)
            self._last = (members, protocol.cluster_level(members, heard, ceiling=self.here.effective))
        return self._last[1]

    def refusal(self, cmd: Command) -> tuple[UpgradeInProgress | None, bool]:
        """On the proposing member, before the command leaves it: (the refusal or None, whether
        only members not heard from yet stand in the way, so gossip may soon lift it)."""
        view, required = self.cluster_level(), protocol.required_level(cmd)
        err = protocol.refusal(cmd.type, required, view)
        return err, err is not None and all(m.protocol is None for m in view.behind(required))

    def check(self, cmd: Command) -> None:
        err, _ = self.refusal(cmd)
        if err is not None:
            raise err

    def check_encoded(self, data: bytes) -> None:
        """On the leader, for a proposal another member forwarded (``identified`` bytes): the
        proposer checked against what it heard; the leader refuses it for a member *it* heard at
        an older level (the proposer's news may be older), not for one it has not heard from yet
        (the proposer has). A command this build cannot decode is refused too: appended, it would
        apply differently on newer members."""
        _, body = split_identified(data)
        try:
            cmd = decode(body)
        except BadRequest:  # decode's one error: an unknown type or bad fields
            cmd_type = _type_of(body)
            if cmd_type and command_class(cmd_type) is None:
                raise protocol.unknown_command(cmd_type, self.cluster_level(), self.here) from None
            raise
        protocol.check(cmd, self.cluster_level(heard_only=True))


def _type_of(body: bytes) -> str:
    try:
        raw = json.loads(body)
    except ValueError:
        return ""
    return str(raw.get("type") or "") if isinstance(raw, dict) else ""
