"""Asyncio driver: runs a RaftNode with a real clock, durable storage, a transport and a state machine.

One task ticks the node; one task drains ``Ready``: send a leader's appends -> persist (in a
dedicated thread, so fsync never blocks the loop) -> send replies and votes -> apply (in the state
machine's own thread when it has one) -> advance. Proposals that arrive while a Ready is being
persisted are appended to the in-memory log and leave together in the next round (group commit).

Persist and apply must succeed before the log can move on. When they fail on this node's disk
(hvd.iofaults): a full disk is retried until space returns, while new proposals are refused
(StorageFullError, HTTP 507); other local failures are retried a few times with backoff; anything
else (or a local failure that persists) stops the loop for good: pending callers get an error,
``health()`` says DEAD, and the daemon exits non-zero so that systemd restarts it. Neither is ever
turned into a command result: that would differ between replicas. A failed snapshot only delays
log compaction: it is logged and tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from hvd.cluster.raft.errors import (
    LoopStoppedError,
    NotLeaderError,
    OutcomeUnknownError,
    ProposalDroppedError,
    RaftError,
    StorageFullError,
)
from hvd.cluster.raft.messages import ConfState, EntryKind, Message
from hvd.cluster.raft.node import ConfChangeOp, RaftConfig, RaftNode, Ready, Role
from hvd.cluster.raft.statemachine import BatchStateMachine, StateMachine
from hvd.cluster.raft.storage import Storage
from hvd.cluster.raft.transport import Transport
from hvd.health import OK, State, Status, task_status
from hvd.iofaults import Recovery, backoff_s, describe, recovery_of

log = logging.getLogger(__name__)

SNAPSHOT_RETRY_S = 30.0  # after a failed snapshot (compaction can wait; the log just grows meanwhile)

NotLeader = NotLeaderError  # the name callers catch to forward a request to ``leader_id``


class RaftDriver:
    """The embedded-Raft side of the Coordinator: ``propose``, ``read_barrier``, membership.

    All public coroutines must be awaited on the loop that called ``start()``.
    """

    def __init__(
        self,
        config: RaftConfig,
        storage: Storage,
        transport: Transport,
        state_machine: StateMachine,
        *,
        tick_seconds: float = 0.05,  # election timeout = election_ticks..2x ticks of this
        snapshot_every: int = 1000,  # applied entries between local snapshots (log compaction)
        rng: random.Random | None = None,
        apply_executor: Executor | None = None,  # the state machine's own thread: saves a hop per round
    ) -> None:
        self._config = config
        self._storage = storage
        self._transport = transport
        self._sm = state_machine
        self._tick_seconds = tick_seconds
        self._snapshot_every = snapshot_every
        self._rng = rng or random.Random()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft-{config.id}")
        self._apply_executor = apply_executor or self._io
        # called on the loop whenever the membership changes (and at start): a member added at run
        # time must become reachable before anything is sent to it
        self.on_conf_change: Callable[[ConfState], None] | None = None
        self._conf_seen: ConfState | None = None
        self._node: RaftNode | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._proposals: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._read_seq = 0
        self._failure: BaseException | None = None  # why the Ready loop stopped for good
        self._storage_full: str | None = None  # why writes are refused while the disk is full
        self._snapshot_not_before = 0.0
        self.persist_rounds = 0  # number of Ready rounds written (group commit makes this < proposals)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load durable state, restore the state machine if it lags the snapshot, start ticking."""
        loop = asyncio.get_running_loop()
        hs, snap, entries = await loop.run_in_executor(self._io, self._storage.load)
        if self._sm.applied_index() < snap.meta.index:
            await loop.run_in_executor(self._io, self._sm.restore, snap.meta.index, snap.data)
        self._node = RaftNode(self._config, self._rng, hs, snap, entries, self._sm.applied_index())
        self._notice_conf()
        self._transport.set_receiver(self._receive)
        self._tasks = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self._ready_loop())]

    async def stop(self) -> None:
        """Stop ticking and processing; pending callers get OutcomeUnknownError."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._transport.set_receiver(lambda m: None)
        error = OutcomeUnknownError("raft driver stopped")
        for _, fut in self._proposals.values():
            _fail(fut, error)
        for rfut in self._reads.values():
            _fail(rfut, error)
        for _, wfut in self._applied_waiters:
            _fail(wfut, error)
        self._proposals.clear()
        self._reads.clear()
        self._applied_waiters.clear()
        self._io.shutdown(wait=True)

    # ------------------------------------------------------------------ state
    @property
    def node(self) -> RaftNode:
        assert self._node is not None, "driver not started"
        return self._node

    @property
    def is_leader(self) -> bool:
        return self.node.role == Role.LEADER

    @property
    def leader_id(self) -> str | None:
        return self.node.lead

    @property
    def term(self) -> int:
        """The current term: a fencing epoch for anything the leader does outside the log."""
        return self.node.term

    @property
    def applied_index(self) -> int:
        return self.node.applied

    @property
    def storage_full(self) -> str | None:
        """Why this node refuses writes now (its disk is full), or None."""
        return self._storage_full

    def health(self) -> Status:
        """DEAD once the loops stopped for good, DEGRADED while the disk is full, else OK."""
        if self._failure is not None:
            return Status(State.DEAD, f"raft loop stopped: {describe(self._failure)}")
        for task in self._tasks:
            status = task_status(task)
            if status.state is State.DEAD:
                return Status(State.DEAD, f"raft loop stopped: {status.reason}")
        if self._storage_full is not None:
            return Status(State.DEGRADED, self._storage_full)
        return OK

    def _check_can_write(self) -> None:
        if self._failure is not None:
            raise LoopStoppedError(f"the Raft loop of this node stopped: {describe(self._failure)}")
        if self._storage_full is not None:
            raise StorageFullError(self._storage_full)

    # ------------------------------------------------------------------ client API
    async def propose(self, data: bytes) -> bytes:
        """Replicate ``data``; returns the state machine's result once committed and applied here.

        Raises NotLeader (forward to ``leader_id``), ProposalDroppedError (never applied: safe to
        retry), StorageFullError (this node's disk is full: not appended), LoopStoppedError or
        OutcomeUnknownError.
        """
        self._check_can_write()
        index, term = self.node.propose(data)
        return await self._await_entry(index, term)

    async def read_barrier(self) -> int:
        """Read-index: returns once local state reflects every write committed before the call."""
        if self._failure is not None:
            raise LoopStoppedError(f"the Raft loop of this node stopped: {describe(self._failure)}")
        self._read_seq += 1
        ctx = f"{self._config.id}:{self._read_seq}".encode()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.node.read_index(ctx)
        self._reads[ctx] = fut
        self._wake.set()
        index = await fut
        await self.wait_applied(index)
        return index

    async def wait_applied(self, index: int) -> None:
        """Wait until the local state machine has applied ``index``."""
        if self.node.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await fut

    async def add_voter(self, node_id: str, address: str = "") -> None:
        await self._change(ConfChangeOp.ADD_VOTER, node_id, address)

    async def add_learner(self, node_id: str, address: str = "") -> None:
        await self._change(ConfChangeOp.ADD_LEARNER, node_id, address)

    async def promote(self, node_id: str) -> None:
        await self._change(ConfChangeOp.PROMOTE, node_id)

    async def remove(self, node_id: str) -> None:
        await self._change(ConfChangeOp.REMOVE, node_id)

    async def transfer_leadership(self, to: str, timeout: float = 5.0) -> None:
        """Hand leadership to ``to`` and wait until this node has stepped down."""
        self.node.transfer_leadership(to)
        self._wake.set()
        async with asyncio.timeout(timeout):
            while self.is_leader:
                await asyncio.sleep(self._tick_seconds)

    async def _change(self, op: ConfChangeOp, node_id: str, address: str = "") -> None:
        index, term = self.node.change_membership(op, node_id, address)
        await self._await_entry(index, term)

    async def _await_entry(self, index: int, term: int) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (term, fut)
        self._wake.set()
        return await fut

    # ------------------------------------------------------------------ loops
    def _receive(self, msg: Message) -> None:
        if self._node is not None:
            self._node.step(msg)
            self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            self.node.tick()
            self._wake.set()

    async def _ready_loop(self) -> None:
        try:
            await self._drain_ready()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug, or a node-local failure that did not go away
            self._die(exc)

    async def _drain_ready(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.node.has_ready():
                rd = self.node.ready()
                self._send_all(rd.before_persist())
                if rd.hard_state is not None or rd.snapshot is not None or rd.entries:
                    await self._must_succeed("persist", self._io, self._persist, rd)
                    self.persist_rounds += 1
                self._send_all(rd.after_persist())
                # a thread hop per round is most of a commit's latency; skip the ones with nothing to do
                results = (await self._must_succeed("apply", self._apply_executor, self._apply, rd)
                           if rd.committed_entries else [])
                self.node.advance(rd)
                self._after_advance(rd, results)
                self._notice_conf()
                await self._maybe_snapshot()

    async def _must_succeed(self, what: str, executor: Executor, fn: Callable[[Ready], Any], rd: Ready) -> Any:
        """Run a step the log cannot move on without: wait out a full disk, retry other local failures
        a few times, re-raise anything else (the caller then stops the loop)."""
        loop = asyncio.get_running_loop()
        attempts = local_failures = 0
        while True:
            try:
                result = await loop.run_in_executor(executor, fn, rd)
            except Exception as exc:
                attempts += 1
                recovery = recovery_of(exc, local_failures + 1)
                if recovery is Recovery.GIVE_UP:
                    raise
                if recovery is Recovery.WAIT_FOR_SPACE:
                    if self._storage_full is None:
                        log.error("raft %s failed, the disk is full: refusing writes until space returns (%s)",
                                  what, describe(exc))
                    self._storage_full = f"this host's disk is full ({what}: {describe(exc)}); free space"
                else:
                    local_failures += 1
                    log.warning("raft %s failed (attempt %d), retrying: %s", what, attempts, describe(exc))
                await asyncio.sleep(backoff_s(attempts))
                continue
            if self._storage_full is not None:
                log.warning("raft %s succeeds again: accepting writes", what)
                self._storage_full = None
            return result

    def _die(self, exc: BaseException) -> None:
        """Stop for good: fail every waiting caller and let health() report it."""
        self._failure = exc
        log.critical("the Raft loop of %s stopped: %s", self._config.id, describe(exc), exc_info=exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        error = LoopStoppedError(f"the Raft loop of this node stopped: {describe(exc)}")
        for _, fut in self._proposals.values():
            _fail(fut, OutcomeUnknownError(str(error)))
        for rfut in self._reads.values():
            _fail(rfut, error)
        for _, wfut in self._applied_waiters:
            _fail(wfut, error)
        self._proposals.clear()
        self._reads.clear()
        self._applied_waiters.clear()

    def _notice_conf(self) -> None:
        conf = self.node.conf
        if conf is not self._conf_seen:
            self._conf_seen = conf
            if self.on_conf_change is not None:
                self.on_conf_change(conf)

    def _persist(self, rd: Ready) -> None:
        self._storage.persist(rd.hard_state, rd.snapshot, rd.entries)
        if rd.snapshot is not None:
            self._sm.restore(rd.snapshot.meta.index, rd.snapshot.data)

    def _apply(self, rd: Ready) -> list[tuple[int, int, bytes]]:
        normal = [(e.index, e.data) for e in rd.committed_entries if e.kind == EntryKind.NORMAL]
        if isinstance(self._sm, BatchStateMachine) and len(normal) > 1:
            outs = dict(zip([i for i, _ in normal], self._sm.apply_batch(normal), strict=True))
        else:
            outs = {i: self._sm.apply(i, data) for i, data in normal}
        return [(e.index, e.term, outs.get(e.index, b"")) for e in rd.committed_entries]

    def _after_advance(self, rd: Ready, results: list[tuple[int, int, bytes]]) -> None:
        for index, term, out in results:
            waiting = self._proposals.pop(index, None)
            if waiting is not None:
                want, fut = waiting
                if want == term:
                    _resolve(fut, out)
                else:
                    _fail(fut, ProposalDroppedError(f"entry {index} was overwritten by term {term}"))
        if rd.snapshot is not None:  # entries covered by an installed snapshot were never seen here
            for index in [i for i in self._proposals if i <= rd.snapshot.meta.index]:
                _fail(
                    self._proposals.pop(index)[1], OutcomeUnknownError(f"entry {index} covered by a snapshot")
                )
        for rs in rd.read_states:
            rfut = self._reads.pop(rs.ctx, None)
            if rfut is not None:
                _resolve(rfut, rs.index)
        for ctx in rd.dropped_reads:
            rfut = self._reads.pop(ctx, None)
            if rfut is not None:
                _fail(rfut, NotLeaderError(self.node.lead))
        applied = self.node.applied
        still = []
        for index, wfut in self._applied_waiters:
            if index <= applied:
                _resolve(wfut, None)
            else:
                still.append((index, wfut))
        self._applied_waiters = still

    async def _maybe_snapshot(self) -> None:
        node = self.node
        if node.applied - node.log.snapshot.meta.index < self._snapshot_every:
            return
        if time.monotonic() < self._snapshot_not_before:
            return
        loop = asyncio.get_running_loop()
        try:
            # labelled with the image's own index: NOOP/CONF entries applied after it do not move the
            # state machine's index, and a restore checks that label against the image
            index, data = await loop.run_in_executor(self._apply_executor, self._sm.snapshot)
            if index <= node.log.snapshot.meta.index:
                return
            snap = node.compact(index, data)
            # if this fails the disk keeps the older snapshot and the whole log: still consistent
            await loop.run_in_executor(self._io, self._storage.compact, snap)
        except Exception as exc:
            self._snapshot_not_before = time.monotonic() + SNAPSHOT_RETRY_S
            log.warning("raft snapshot failed, compaction retried in %.0f s: %s", SNAPSHOT_RETRY_S, describe(exc))

    def _send_all(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            with contextlib.suppress(OSError, RaftError):  # Raft retries by itself on the next heartbeat
                self._transport.send(msg.to, msg)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)
