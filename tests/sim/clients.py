"""Simulated clients: sequential put/get operations against whichever node leads.

Each client records its operations for the linearizability checker. A put whose outcome the
client never learns (timeout, crash) stays in the history as pending (it may or may not have
taken effect); a get without an answer is dropped (it had no effect).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from hvd.cluster.raft.errors import NotLeaderError, RaftError
from tests.sim.kv import get_cmd, put_cmd
from tests.sim.linearizability import Op

if TYPE_CHECKING:
    from hvd.cluster.raft.node import RaftNode
    from tests.sim.cluster import Sim, SimNode

KEYS = ("x", "y")
OP_TIMEOUT_MS = 400


class Client:
    def __init__(self, sim: Sim, cid: int, n_ops: int, rng: random.Random) -> None:
        self.sim = sim
        self.cid = cid
        self.n_ops = n_ops
        self.rng = rng
        self.history: list[Op] = []
        self.done_ops = 0
        self.hint: str | None = None
        self._token = 0  # identifies the current op; late callbacks of older ops are ignored
        self._op: tuple[str, str, str] = ("", "", "")
        self._call = 0
        self._deadline = 0
        self._accepted = False  # a put reached a leader's log: its outcome may now be "unknown"

    @property
    def finished(self) -> bool:
        return self.done_ops >= self.n_ops

    def start(self) -> None:
        self.sim.schedule(self.rng.randint(0, 50), self._next_op)

    def _next_op(self) -> None:
        if self.finished:
            return
        # reads are half the traffic: read-index reads (served by the leader without a log
        # entry) are the path a deposed or brand-new leader can get wrong
        kind = self.rng.choice(("put", "put", "get", "read", "read", "read"))
        key = self.rng.choice(KEYS)
        self._op = (kind, key, f"c{self.cid}.{self.done_ops}" if kind == "put" else "")
        self._token += 1
        self._call = self.sim.clock()
        self._deadline = self.sim.now + OP_TIMEOUT_MS
        self._accepted = False
        token = self._token
        self.sim.schedule(OP_TIMEOUT_MS, lambda: self._timeout(token))
        self._attempt(token)

    def _pick(self) -> SimNode | None:
        nodes = self.sim.nodes
        if self.hint is not None and nodes[self.hint].up:
            # a stalled node does not answer: wait for it (it may wake up still believing it leads)
            return None if self.hint in self.sim.paused else nodes[self.hint]
        live = [n for n in nodes.values() if n.up and n.id not in self.sim.paused]
        return self.rng.choice(live) if live else None

    def _retry(self, token: int, delay: int) -> None:
        if self.sim.now + delay < self._deadline:
            self.sim.schedule(delay, lambda: self._attempt(token))

    def _attempt(self, token: int) -> None:
        if token != self._token:
            return
        node = self._pick()
        if node is None:
            self._retry(token, 20)
            return
        kind, key, value = self._op
        ctx = f"{self.cid}.{token}.{self.sim.clock()}".encode()
        try:
            if kind == "read":
                node.read_waiters[ctx] = lambda index: self._read_index_done(token, node, index)
                node.call(lambda r: r.read_index(ctx))
            else:
                cmd = put_cmd(key, value) if kind == "put" else get_cmd(key)

                def propose(r: RaftNode) -> tuple[int, int]:
                    return r.propose(cmd)

                index, term = node.call(propose)  # type: ignore[misc]
                self._accepted = True
                node.waiters.setdefault(index, []).append((term, lambda res: self._result(token, res)))
        except NotLeaderError as e:
            node.read_waiters.pop(ctx, None)
            self.hint = e.leader_id if e.leader_id != node.id else None
            self._retry(token, 5 if e.leader_id else 30)
        except RaftError:
            self._retry(token, 30)

    def _read_index_done(self, token: int, node: SimNode, index: int | None) -> None:
        if token != self._token:
            return
        if index is None:
            self._retry(token, 10)
            return
        if node.raft is not None and node.raft.applied >= index:
            self._complete(token, node.sm.get(self._op[1]))
        else:
            node.apply_waiters.append((index, lambda: self._complete(token, node.sm.get(self._op[1]))))

    def _result(self, token: int, result: bytes | None) -> None:
        if token != self._token:
            return
        if result is None:  # overwritten by another leader: it will never take effect
            self._accepted = False
            self._retry(token, 5)
            return
        self._complete(token, result.decode())

    def _complete(self, token: int, observed: str) -> None:
        if token != self._token:
            return
        kind, key, value = self._op
        ret = self.sim.clock()
        if kind == "put":
            self.history.append(Op(self.cid, key, "put", value, self._call, ret))
        else:
            self.history.append(Op(self.cid, key, "get", observed, self._call, ret))
        if self.sim.verbose:
            self.sim.log(f"client {self.cid} {kind}({key}) -> {value or observed!r}")
        self._finish()

    def _timeout(self, token: int) -> None:
        if token != self._token:
            return
        kind, key, value = self._op
        if kind == "put" and self._accepted:
            self.history.append(Op(self.cid, key, "put", value, self._call))
        self.sim.log(f"client {self.cid} {kind}({key}) timed out (accepted={self._accepted})")
        self.hint = None
        self._finish()

    def _finish(self) -> None:
        self._token += 1
        self.done_ops += 1
        self.sim.schedule(self.rng.randint(0, 20), self._next_op)
