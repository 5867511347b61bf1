"""The simulated state machine: a durable key/value register store, plus its JSON commands."""

from __future__ import annotations

import json


def put_cmd(key: str, value: str) -> bytes:
    return json.dumps(["put", key, value]).encode()


def get_cmd(key: str) -> bytes:
    return json.dumps(["get", key]).encode()


class KVStateMachine:
    """Implements hvd.cluster.raft.statemachine.StateMachine; survives simulated crashes
    (like the catalog, whose applied index commits with each change)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self._applied = 0

    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, data: bytes) -> bytes:
        self._applied = index
        try:
            op = json.loads(data)
        except ValueError:
            return b"!bad command"
        if op[0] == "put":
            self.data[op[1]] = op[2]
            return b""
        return self.data.get(op[1], "").encode()

    def snapshot(self) -> tuple[int, bytes]:
        return self._applied, json.dumps(self.data, sort_keys=True).encode()

    def restore(self, index: int, data: bytes) -> None:
        self.data = json.loads(data) if data else {}
        self._applied = index

    def get(self, key: str) -> str:
        return self.data.get(key, "")
