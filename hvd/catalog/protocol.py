"""The catalog protocol level: which commands every member of a mixed-version cluster can apply.

During a rolling upgrade, members run different builds. Every member applies every committed
command, and a build decodes commands with ``extra="forbid"`` over the command types it knows: an
older member handed a command type (or a field) it does not know records "malformed command" as
the result while newer members apply it, and the replicas silently diverge. So:

- Each command type declares the level that introduced it (``Command.since``, default 1);
  a field added to a released command declares its level in ``Command.fields_since`` (it is
  left off the wire while it holds its default, so older members still decode the command).
  A released command's fields are otherwise frozen (tests/unit/test_protocol.py checks them
  against tests/fixtures/protocol/).
- Every host advertises the level it can apply in its gossip report (``protocol``; a report
  without the field comes from a build older than levels, which applies level 1).
- The cluster's usable level is the minimum over the current Raft members (voters and learners:
  both apply every entry). A command whose level is above it is refused before it is appended,
  on the member that proposes it and again on the leader (which may hear of an older member
  first), with :class:`hvd.errors.UpgradeInProgress` naming the members still behind. A refusal
  only for members not heard from yet waits a little for gossip on the proposer; the leader only
  refuses for members it heard at an older level.

A release that adds commands or fields raises PROTOCOL, names itself in RELEASES, tags what it
added with the new level, and keeps the previous level's wire form
(``python -m tests.fixtures.protocol.make_fixture N`` from that release's checkout).

This module is pure: the gate (hvd/cluster/protocol_gate.py) feeds it gossip and Raft membership.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hvd.catalog.commands import Command
from hvd.errors import UpgradeInProgress

PROTOCOL = 2  # the level this build applies: raise it when a release adds commands or fields
OLDEST = 1  # the level of builds that advertise none (hvd 0.1.0)
RELEASES = {1: "0.1.0", 2: "0.2.0"}  # the first hvd release that applies each level (for messages and docs)


@dataclass(frozen=True)
class MemberLevel:
    """What a member advertises: ``protocol`` None = not heard from yet."""

    node_id: str
    protocol: int | None
    hvd_version: str = ""

    @property
    def effective(self) -> int:
        """The level counted for this member: one not heard from counts as the oldest level."""
        return OLDEST if self.protocol is None else self.protocol

    def describe(self) -> str:
        if self.protocol is None:
            return f"{self.node_id} has not been heard from yet (counted as protocol {OLDEST})"
        version = f"hvd {self.hvd_version}" if self.hvd_version else "an hvd that reports no version"
        return f"{self.node_id} runs {version} (protocol {self.protocol})"


@dataclass(frozen=True)
class ClusterLevel:
    """The level every current member can apply, and each member's part in it."""

    usable: int
    members: tuple[MemberLevel, ...]

    def behind(self, level: int) -> tuple[MemberLevel, ...]:
        """The members that cannot apply commands of ``level``."""
        return tuple(m for m in self.members if m.effective < level)


def cluster_level(member_ids: Iterable[str], heard: Mapping[str, MemberLevel], ceiling: int = PROTOCOL) -> ClusterLevel:
    """The usable level of a cluster whose Raft members are ``member_ids``, from what each
    advertised (``heard``, by node id), capped at ``ceiling`` (what the deciding host applies).

    A member missing from ``heard`` counts as :data:`OLDEST`, not as the lowest level heard or as
    this build's: nothing is known about what it runs (a learner just added, a member down since
    this host started), and guessing high is the one mistake that diverges replicas, while
    guessing low only holds new commands back until its first gossip report (about a second after
    it starts). A member that went down keeps the level of its last report: it may come back
    with an older build only by a downgrade, which the catalog's schema check refuses anyway when
    the schema changed. A member that never applied any level (an empty membership) leaves the
    oldest level usable.
    """
    members = tuple(heard.get(m) or MemberLevel(m, None) for m in sorted(set(member_ids)))
    usable = min((m.effective for m in members), default=OLDEST)
    return ClusterLevel(min(usable, ceiling), members)


def required_level(cmd: Command) -> int:
    """The level a member must apply to decode ``cmd``: its type's, or a later field's when set."""
    cls = type(cmd)
    level = cls.since
    for name, since in cls.fields_since.items():
        if getattr(cmd, name) != cls.model_fields[name].get_default(call_default_factory=True):
            level = max(level, since)
    return level


def refusal(cmd_type: str, required: int, cluster: ClusterLevel) -> UpgradeInProgress | None:
    """The error that holds ``cmd_type`` (needing ``required``) back, or None when every member can apply it."""
    if required <= cluster.usable:
        return None
    behind = cluster.behind(required)
    who = ", ".join(m.describe() for m in behind) or f"the cluster applies protocol {cluster.usable}"
    return UpgradeInProgress(
        f"{cmd_type} needs protocol {required}; {who}: finish the upgrade first",
        command=cmd_type, required=required, usable=cluster.usable,
        behind=[{"node_id": m.node_id, "hvd_version": m.hvd_version or None, "protocol": m.protocol}
                for m in behind],
    )


def check(cmd: Command, cluster: ClusterLevel) -> None:
    """Raise UpgradeInProgress when some member of ``cluster`` could not apply ``cmd``."""
    err = refusal(cmd.type, required_level(cmd), cluster)
    if err is not None:
        raise err


def unknown_command(cmd_type: str, cluster: ClusterLevel, here: MemberLevel) -> UpgradeInProgress:
    """The leader's refusal of a forwarded command type its build does not know (sent by a newer
    member with a stale view of the cluster); ``here`` is the leader."""
    return UpgradeInProgress(
        f"{cmd_type} is not known to the leader: {here.describe()}; finish the upgrade first",
        command=cmd_type, required=None, usable=cluster.usable,
        behind=[{"node_id": here.node_id, "hvd_version": here.hvd_version or None, "protocol": here.protocol}],
    )
