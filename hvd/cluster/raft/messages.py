"""Raft wire and storage types: log entries, hard state, snapshots and messages.

Everything is a frozen dataclass so the pure node can share values without copying.
``encode_message``/``decode_message`` give the JSON wire form (bytes are base64), never Python
object serialisation.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class EntryKind(IntEnum):
    """What a log entry carries; only NORMAL entries reach the state machine."""

    NORMAL = 0
    NOOP = 1  # appended by each new leader so it can commit entries of older terms
    CONF = 2  # a membership change: data is the JSON of the resulting ConfState


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfState:
    """Membership: voters elect and commit; learners only receive the log.

    ``addresses`` (sorted ``(id, url)`` pairs) is where each member's peer API listens: it travels
    with the membership in the log, so a member added at run time is reachable by everyone.
    """

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()
    addresses: tuple[tuple[str, str], ...] = ()

    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def address_map(self) -> dict[str, str]:
        return dict(self.addresses)

    def to_dict(self) -> dict[str, Any]:
        return {"voters": sorted(self.voters), "learners": sorted(self.learners),
                "addresses": dict(self.addresses)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ConfState:
        return cls(frozenset(raw["voters"]), frozenset(raw["learners"]),
                   tuple(sorted((raw.get("addresses") or {}).items())))

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ConfState:
        return cls.from_dict(json.loads(data))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image up to ``meta.index`` (opaque ``data``) plus the membership at that index."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int
    frm: str
    to: str
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # set by a leadership transfer: voters skip the leader-stickiness check


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    frm: str
    to: str
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    term: int
    frm: str
    to: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    seq: int = 0  # leader's round number, echoed back; confirms leadership for read-index


@dataclass(frozen=True, slots=True)
class AppendResponse:
    term: int
    frm: str
    to: str
    success: bool
    match_index: int = 0
    prev_index: int = 0  # echo of the request's prev_index, to discard stale rejections
    conflict_index: int = 0
    conflict_term: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    term: int
    frm: str
    to: str
    snapshot: Snapshot
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the receiver campaigns at once, without pre-vote."""

    term: int
    frm: str
    to: str


Message = VoteRequest | VoteResponse | AppendRequest | AppendResponse | SnapshotRequest | TimeoutNow

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (VoteRequest, VoteResponse, AppendRequest, AppendResponse, SnapshotRequest, TimeoutNow)
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _entry_to_json(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.kind), _b64(e.data)]


def _entry_from_json(raw: list[Any]) -> Entry:
    return Entry(int(raw[0]), int(raw[1]), EntryKind(raw[2]), base64.b64decode(raw[3]))


def _snapshot_to_json(s: Snapshot) -> dict[str, Any]:
    return {"index": s.meta.index, "term": s.meta.term, "conf": s.meta.conf.to_dict(), "data": _b64(s.data)}


def _snapshot_from_json(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(SnapshotMeta(raw["index"], raw["term"], ConfState.from_dict(raw["conf"])),
                    base64.b64decode(raw["data"]))


def encode_message(msg: Message) -> bytes:
    """JSON wire form of a message: ``{"type": <class name>, ...fields}``."""
    out: dict[str, Any] = {"type": type(msg).__name__}
    for name in msg.__dataclass_fields__:
        value = getattr(msg, name)
        if name == "entries":
            value = [_entry_to_json(e) for e in value]
        elif name == "snapshot":
            value = _snapshot_to_json(value)
        out[name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def decode_message(data: bytes) -> Message:
    """Inverse of :func:`encode_message`; raises ``ValueError``/``KeyError`` on malformed input."""
    raw = json.loads(data)
    cls = _TYPES[raw.pop("type")]
    if "entries" in raw:
        raw["entries"] = tuple(_entry_from_json(e) for e in raw["entries"])
    if "snapshot" in raw:
        raw["snapshot"] = _snapshot_from_json(raw["snapshot"])
    msg: Message = cls(**raw)
    return msg
