"""In-memory view of a node's Raft log: a snapshot point followed by entries.

The node keeps every entry after its last snapshot in memory; durability is the driver's job
(it persists what ``Ready`` hands it). Indices start at 1; index 0 is the empty snapshot.
"""

from __future__ import annotations

from hvd.cluster.raft.messages import ConfState, Entry, EntryKind, Snapshot


class RaftLog:
    """Entries ``snapshot.meta.index + 1 .. last_index()``, contiguous."""

    def __init__(self, snapshot: Snapshot, entries: list[Entry]) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = [e for e in entries if e.index > snapshot.meta.index]
        if self.entries and self.entries[0].index != snapshot.meta.index + 1:
            raise ValueError("log entries do not follow the snapshot")

    @property
    def first_index(self) -> int:
        """First index still held as an entry (snapshot index + 1)."""
        return self.snapshot.meta.index + 1

    def last_index(self) -> int:
        return self.snapshot.meta.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.meta.term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or beyond the end."""
        snap = self.snapshot.meta
        if index == snap.index:
            return snap.term
        if index < snap.index or index > self.last_index():
            return None
        return self.entries[index - snap.index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.meta.index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``; ``lo`` must be >= first_index."""
        base = self.snapshot.meta.index + 1
        return self.entries[lo - base : hi - base]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int | None:
        """Merge entries that follow a matching prefix; returns the first truncated index, if any.

        Entries already present with the same term are kept (a stale, reordered append must never
        cut off newer entries); the first conflicting entry and everything after it are replaced.
        """
        truncated: int | None = None
        for i, e in enumerate(entries):
            if e.index <= self.snapshot.meta.index:
                continue
            existing = self.term(e.index)
            if existing == e.term:
                continue
            if existing is not None:
                truncated = e.index
                del self.entries[e.index - self.snapshot.meta.index - 1 :]
            self.entries.extend(entries[i:])
            return truncated
        return truncated

    def first_index_of_term(self, index: int) -> int:
        """Walk back from ``index`` to the first entry with the same term (conflict hint)."""
        term = self.term(index)
        while index - 1 >= self.first_index and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """Largest index <= ``at_most`` whose entry has ``term``; None if we hold none."""
        idx = min(at_most, self.last_index())
        while idx >= self.first_index:
            t = self.entry(idx).term
            if t == term:
                return idx
            if t < term:
                return None
            idx -= 1
        return None

    def compact(self, snapshot: Snapshot) -> None:
        """Replace entries up to ``snapshot.meta.index`` by the snapshot, keeping any suffix."""
        idx = snapshot.meta.index
        if idx <= self.snapshot.meta.index:
            return
        if self.term(idx) == snapshot.meta.term:
            self.entries = self.entries[idx - self.snapshot.meta.index :]
        else:
            self.entries = []
        self.snapshot = snapshot

    def conf_at(self, index: int) -> tuple[ConfState, int]:
        """Membership in force at ``index`` (latest CONF entry at or before it) and that entry's index."""
        i = min(index, self.last_index()) - self.snapshot.meta.index - 1
        while i >= 0:
            e = self.entries[i]
            if e.kind == EntryKind.CONF:
                return ConfState.from_json(e.data), e.index
            i -= 1
        return self.snapshot.meta.conf, self.snapshot.meta.index
