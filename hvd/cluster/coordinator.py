"""The catalog's Coordinator over embedded Raft.

``RaftCoordinator.propose`` commits on the leader: locally when this node leads, otherwise by
forwarding the encoded command to the leader's ``/internal/v1/raft/propose``. While there is no
leader (election, failover) it retries for ``propose_timeout`` seconds, then answers
ServiceUnavailable (503, retryable). Only failures that guarantee the command was not appended
are retried; anything else (a lost connection mid-request) is reported as "outcome unknown".

The catalog's SQLite connection belongs to one thread, so ``CatalogStateMachine`` runs every
CatalogState call on the database thread and blocks the Raft I/O thread until it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from hvd.catalog.commands import PROPOSAL_ID_BYTES, Command, encode, identified
from hvd.catalog.coordinator import Coordinator
from hvd.catalog.db import Database
from hvd.catalog.state import CatalogState, decode_result, encode_result
from hvd.cluster.http_transport import (
    MEMBERSHIP_PATH,
    PROPOSE_PATH,
    READ_INDEX_PATH,
    STATUS_PATH,
    HttpTransport,
    PeerClient,
    PeerErrors,
)
from hvd.cluster.raft.driver import RaftDriver
from hvd.cluster.raft.errors import (
    LoopStoppedError,
    MembershipError,
    NotLeaderError,
    OutcomeUnknownError,
    ProposalDroppedError,
    StorageFullError,
)
from hvd.cluster.raft.messages import ConfState, Message
from hvd.cluster.raft.node import Role
from hvd.cluster.raft.storage import SqliteStorage
from hvd.errors import (
    BadRequest,
    Conflict,
    HvdError,
    InsufficientStorage,
    NotLeader,
    OutcomeUnknown,
    ServiceUnavailable,
)
from hvd.health import State, Status

if TYPE_CHECKING:
    from hvd.cluster.protocol_gate import ProtocolGate

log = logging.getLogger(__name__)

MEMBERSHIP_TIMEOUT_S = 60.0  # adding a member may ship it the whole catalog first
MISDIRECTED = 421  # the peer is not the leader: the request was not appended, safe to retry elsewhere
UNHEARD_POLL_S = 0.1  # how often a proposal held back for a member not heard from yet looks again


class CatalogStateMachine:
    """The Raft StateMachine over CatalogState, run on the catalog's database thread.

    Called from the Raft driver's I/O thread, which blocks on the database thread. This cannot
    deadlock: the database thread only ever runs self-contained SQLite work and never waits on the
    Raft thread or the event loop.
    """

    def __init__(self, db: Database, state: CatalogState) -> None:
        self._db = db
        self._state = state

    def applied_index(self) -> int:
        return self._db.call(lambda _c: self._state.applied_index())

    def apply(self, index: int, data: bytes) -> bytes:
        return self._db.call(lambda _c: self._state.apply(index, data))

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        # one transaction for a whole Raft round: group commit reaches the catalog too
        return self._db.call(lambda _c: self._state.apply_batch(entries, contiguous=False))

    def snapshot(self) -> tuple[int, bytes]:
        return self._db.call(lambda _c: self._state.snapshot())

    def restore(self, index: int, data: bytes) -> None:
        self._db.call(lambda _c: self._state.restore(index, data))


class RaftCoordinator(Coordinator):
    """Coordinator over a RaftDriver; forwards to the leader through ``PeerClient`` when a follower."""

    def __init__(
        self,
        driver: RaftDriver,
        node_id: str,
        *,
        client: PeerClient | None = None,
        transport: HttpTransport | None = None,
        propose_timeout: float = 10.0,
        storage: SqliteStorage | None = None,
    ) -> None:
        self.driver = driver
        self._storage = storage
        self.node_id = node_id
        self._client = client
        self._transport = transport
        self._propose_timeout = propose_timeout
        self._static_peers = dict(client.peers) if client is not None else {}
        self._forgetting: set[asyncio.Task[None]] = set()
        self._conf_listeners: list[Callable[[ConfState], None]] = []
        # holds back commands an older member could not apply (rolling upgrades); None = no check
        # (Raft composed without gossip, in tests): the daemon always sets one
        self.gate: ProtocolGate | None = None
        driver.on_conf_change = self._on_conf_change

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the transport and Raft; a sole voter elects itself at once instead of waiting
        out an election timeout (nobody else could win, and every single-host start would pay it)."""
        if self._client is not None:
            await self._client.start()
        if self._transport is not None:
            await self._transport.start()
        await self.driver.start()
        node = self.driver.node
        if node.conf.voters == frozenset({self.node_id}):
            for _ in range(2 * node.cfg.election_ticks):  # ticks are logical: fast-forward them
                if node.role == Role.LEADER:
                    break
                node.tick()

    async def stop(self) -> None:
        try:
            await self.driver.stop()
        finally:
            if self._transport is not None:
                await self._transport.close()
            if self._client is not None:
                await self._client.close()
            if self._storage is not None:
                self._storage.close()  # the driver's I/O thread is gone: nothing else uses it now

    # ------------------------------------------------------------------ state
    @property
    def is_leader(self) -> bool:
        return self.driver.is_leader

    @property
    def leader_id(self) -> str | None:
        return self.driver.leader_id

    @property
    def term(self) -> int:
        return self.driver.term

    def health(self) -> Status:
        """The Raft loop's health (for /healthz and the watchdog)."""
        return self.driver.health()

    def status(self) -> dict[str, Any]:
        """This member's view of the cluster (served at /internal/v1/cluster/status)."""
        node = self.driver.node
        return {
            "node_id": self.node_id,
            "role": str(node.role),
            "term": node.term,
            "leader": node.lead,
            "commit": node.commit,
            "applied": node.applied,
            "last_index": node.log.last_index(),
            "voters": sorted(node.conf.voters),
            "learners": sorted(node.conf.learners),
            "persist_rounds": self.driver.persist_rounds,
            "dropped_messages": self._transport.dropped if self._transport is not None else 0,
        }

    # ------------------------------------------------------------------ writes
    async def propose(self, cmd: Command) -> dict[str, Any]:
        if self.gate is not None:
            await self._admit(cmd, self.gate)  # before anything leaves this member; the leader checks again
        return decode_result(await self.propose_bytes(encode(cmd)))

    async def _admit(self, cmd: Command, gate: ProtocolGate) -> None:
        """Raise UpgradeInProgress when a member cannot apply ``cmd``. A refusal only for members not
        heard from yet waits for gossip (which hears a starting member within a second or two)
        until the propose timeout: right after a start, every other member is one."""
        deadline = time.monotonic() + self._propose_timeout
        while True:
            err, unheard_only = gate.refusal(cmd)
            if err is None:
                return
            if not unheard_only or time.monotonic() + UNHEARD_POLL_S > deadline:
                raise err
            await asyncio.sleep(UNHEARD_POLL_S)

    async def propose_bytes(self, data: bytes) -> bytes:
        """Commit an encoded command through the leader; returns the encoded apply result.
        The caller has checked the protocol level (``propose`` does).

        The command is tagged with a fresh proposal id, so an attempt whose outcome is unknown (the
        connection to the leader broke, leadership moved mid-commit) is simply sent again until
        the deadline: the catalog applies an id once and answers a repeat with the first result.
        """
        self._check_can_write()
        data = identified(os.urandom(PROPOSAL_ID_BYTES), data)
        deadline = time.monotonic() + self._propose_timeout
        delay = 0.01
        unknown: OutcomeUnknown | None = None
        while True:
            leader = self.driver.leader_id
            forwarded: tuple[bytes, int] | None = None
            try:
                if self.driver.is_leader:
                    return await self.propose_local(data, deadline - time.monotonic(), recheck=False)
                if leader is not None and self._client is not None and leader in self._client.peers:
                    forwarded = await self._forward(leader, PROPOSE_PATH, data, deadline)
            except NotLeader:
                pass
            except OutcomeUnknown as exc:
                unknown = exc
            if forwarded is not None:
                result, applied = forwarded
                # read-your-writes: the caller reads this node's catalog next
                await self._wait_applied_until(applied, deadline)
                return result
            if time.monotonic() + delay > deadline:
                if unknown is not None:
                    raise unknown
                raise ServiceUnavailable(
                    f"no Raft leader could commit the change within {self._propose_timeout:.0f} s"
                    f" (leader: {leader or 'unknown'}); retry later"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _check_can_write(self) -> None:
        """A member whose disk is full (or whose Raft loop stopped) could not persist or apply the
        change even when another member leads: refuse it before anything is appended."""
        full = self.driver.storage_full
        if full is not None:
            raise InsufficientStorage(full)
        health = self.driver.health()
        if health.state is State.DEAD:
            raise ServiceUnavailable(health.reason)

    async def propose_local(self, data: bytes, timeout: float | None = None, *, recheck: bool = True) -> bytes:
        """Leader side of a proposal. Raises NotLeader (not appended: retry elsewhere),
        InsufficientStorage (the disk is full: not appended), UpgradeInProgress or BadRequest (a
        forwarded command some member could not apply, or that this build cannot decode: not
        appended) or OutcomeUnknown (it may have been committed: only an identified proposal may be
        re-sent). ``recheck`` False: this member proposed it and checked its level already."""
        if recheck and self.gate is not None and self.driver.is_leader:
            self.gate.check_encoded(data)
        timeout = self._propose_timeout if timeout is None else max(timeout, 0.1)
        try:
            async with asyncio.timeout(timeout):
                return await self.driver.propose(data)
        except StorageFullError as exc:
            raise InsufficientStorage(str(exc)) from exc
        except LoopStoppedError as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except (NotLeaderError, ProposalDroppedError) as exc:
            raise NotLeader(str(exc), leader_id=self.driver.leader_id) from exc
        except (OutcomeUnknownError, TimeoutError) as exc:
            raise OutcomeUnknown(f"the change may or may not have been committed: {exc or 'timed out'}") from exc

    async def _wait_applied_until(self, index: int, deadline: float) -> None:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self.driver.wait_applied(index)
        except TimeoutError as exc:
            raise ServiceUnavailable(f"this member has not caught up to index {index} yet; retry") from exc

    async def _forward(self, leader: str, path: str, body: bytes, deadline: float) -> tuple[bytes, int] | None:
        """POST to the leader; (response body, leader's applied index), or None when it is safe
        to retry."""
        assert self._client is not None
        try:
            status, out, applied = await self._client.post(leader, path, body, max(deadline - time.monotonic(), 0.1))
        except aiohttp.ClientConnectorError:
            return None  # never reached the leader (it is down or restarting): not appended
        except PeerErrors as exc:
            raise OutcomeUnknown(
                f"lost the connection to leader {leader}; the change may or may not have been committed"
            ) from exc
        if status == 200:
            return out, applied
        if status == MISDIRECTED:
            return None
        if status == 503:  # the leader could not tell whether it committed (or is stepping down)
            raise OutcomeUnknown(f"leader {leader}: {_wire_error(out, 'HTTP 503').message}")
        if status == 401:
            raise ServiceUnavailable(f"leader {leader} refused this node's signature: check [cluster] cluster_key")
        raise _wire_error(out, f"leader {leader} answered HTTP {status}")

    # ------------------------------------------------------------------ reads
    async def wait_applied(self, index: int) -> None:
        await self.driver.wait_applied(index)

    async def read_barrier(self) -> None:
        """Read-index: once this returns, local reads include every write committed before the call."""
        deadline = time.monotonic() + self._propose_timeout
        delay = 0.01
        while True:
            leader = self.driver.leader_id
            if self.driver.is_leader:
                try:
                    await self.read_index_local(deadline - time.monotonic())
                    return
                except NotLeader:
                    pass
            elif leader is not None and self._client is not None and leader in self._client.peers:
                try:
                    forwarded = await self._forward(leader, READ_INDEX_PATH, b"", deadline)
                except OutcomeUnknown:
                    forwarded = None  # a read changes nothing: asking again is always safe
                if forwarded is not None:
                    await self._wait_applied_until(int(json.loads(forwarded[0])["index"]), deadline)
                    return
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable("no Raft leader could confirm the commit index; retry later")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def read_index_local(self, timeout: float | None = None) -> int:
        """Leader side of read-index: the commit index, confirmed by a quorum, once applied here."""
        timeout = self._propose_timeout if timeout is None else max(timeout, 0.1)
        try:
            async with asyncio.timeout(timeout):
                return await self.driver.read_barrier()
        except NotLeaderError as exc:
            raise NotLeader(str(exc), leader_id=self.driver.leader_id) from exc
        except LoopStoppedError as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except (OutcomeUnknownError, TimeoutError) as exc:
            raise ServiceUnavailable("the leader could not confirm its commit index") from exc

    # ------------------------------------------------------------------ membership
    def add_conf_listener(self, listener: Callable[[ConfState], None]) -> None:
        """Call ``listener`` with every membership this node applies from now on."""
        self._conf_listeners.append(listener)

    def _on_conf_change(self, conf: ConfState) -> None:
        """Reach every member at the address the log gives it (configured peers fill the gaps)."""
        for listener in self._conf_listeners:
            listener(conf)
        if self._client is None:
            return
        self._client.set_peers({**self._static_peers, **conf.address_map()})
        if self._transport is not None:
            for peer in self._transport.streams() - conf.members():
                task = asyncio.get_running_loop().create_task(self._transport.forget(peer))
                self._forgetting.add(task)  # the loop only holds weak references to tasks
                task.add_done_callback(self._forgetting.discard)

    def member_ids(self) -> frozenset[str]:
        """The current Raft members (voters and learners): every one applies every entry."""
        return frozenset(self.driver.node.conf.members())

    def members(self) -> list[dict[str, Any]]:
        """This member's view of the membership: id, role, peer address, replicated index (leader)."""
        node = self.driver.node
        addresses = {**self._static_peers, **node.conf.address_map()}
        out = []
        for member in sorted(node.conf.members()):
            match = node.log.last_index() if member == self.node_id else node.match_of(member)
            out.append({
                "id": member,
                "role": "voter" if member in node.conf.voters else "learner",
                "address": addresses.get(member, ""),
                "leader": member == node.lead,
                "match_index": match if node.role == Role.LEADER else None,
            })
        return out

    async def check_joiner(self, node_id: str, address: str, timeout: float = 3.0) -> None:
        """Before adding ``node_id`` at ``address``: it must answer there, signed with our cluster
        key, as that node id, with no membership of its own yet (started with join = true)."""
        if self._client is None:
            raise BadRequest("this host runs alone: set [cluster] peers (itself) and cluster_key, restart it,"
                             " then add members")
        try:
            status, body = await self._client.probe(address, STATUS_PATH, timeout)
        except PeerErrors as exc:
            raise BadRequest(f"{node_id} does not answer at {address}: {type(exc).__name__} {exc}".strip()) from exc
        if status == 401:
            raise BadRequest(f"{address} refused this cluster's signature: it has another cluster_key")
        if status != 200:
            raise BadRequest(f"{address} is not an hvd peer API (HTTP {status})")
        try:
            seen = json.loads(body)
            them, voters = str(seen["node_id"]), list(seen["voters"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"{address} answered an unexpected status: {exc}") from exc
        if them != node_id:
            raise BadRequest(f"{address} is node {them!r}, not {node_id!r}")
        if voters and node_id not in self.driver.node.conf.members():
            raise Conflict(f"{node_id} already belongs to a cluster (voters {', '.join(voters)}):"
                           " start it with an empty data_dir and [cluster] join = true")

    async def change_membership(self, change: dict[str, Any]) -> None:
        """Apply ``{"op": "add"|"remove"|"transfer", "id": ..., "address": ..., "voter": bool}`` on
        the leader (forwarded there from a follower). Raises Conflict when Raft refuses it."""
        timeout = MEMBERSHIP_TIMEOUT_S
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            leader = self.driver.leader_id
            try:
                if self.driver.is_leader:
                    await self.change_membership_local(change, deadline - time.monotonic())
                    return
                known = leader is not None and self._client is not None and leader in self._client.peers
                if known and await self._forward(str(leader), MEMBERSHIP_PATH, json.dumps(change).encode(),
                                                 deadline):
                    return
            except NotLeader:
                pass
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable(f"no Raft leader could change the membership within {timeout:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def change_membership_local(self, change: dict[str, Any], timeout: float) -> None:
        """Leader side of :meth:`change_membership`. An added voter joins as a learner first and is
        promoted once it has caught up, so a slow new member never costs the cluster its quorum."""
        op, member = str(change.get("op")), str(change.get("id"))
        driver = self.driver
        try:
            async with asyncio.timeout(max(timeout, 0.1)):
                if op == "add":
                    if member not in driver.node.conf.learners or not change.get("voter", True):
                        await driver.add_learner(member, str(change.get("address", "")))
                    if change.get("voter", True):  # (a learner already there is promoted: a retried add)
                        while (driver.node.match_of(member) or 0) < driver.node.commit:
                            if not driver.is_leader:
                                raise NotLeaderError(driver.leader_id)
                            await asyncio.sleep(0.05)
                        await driver.promote(member)
                elif op == "remove":
                    await driver.remove(member)
                elif op == "transfer":
                    await driver.transfer_leadership(member)
                else:
                    raise BadRequest(f"unknown membership operation {op!r}")
        except MembershipError as exc:
            raise Conflict(f"cluster membership: {exc}") from exc
        except (NotLeaderError, ProposalDroppedError) as exc:
            raise NotLeader(str(exc), leader_id=driver.leader_id) from exc
        except (OutcomeUnknownError, TimeoutError) as exc:
            hint = (" (a new voter that has not caught up stays a learner: check it runs with join = true and"
                    " repeat the add)" if op == "add" else "")
            raise OutcomeUnknown(f"cluster membership: {op} {member} did not finish in time{hint}") from exc

    # ------------------------------------------------------------------ peer routes
    def receive(self, messages: list[Message]) -> None:
        """A batch of Raft messages that arrived on a peer stream (already authenticated)."""
        if self._transport is not None:
            self._transport.deliver(messages)


def _wire_error(body: bytes, fallback: str) -> HvdError:
    try:
        return HvdError.from_wire(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return ServiceUnavailable(fallback)


def routing_error_response(exc: HvdError) -> tuple[int, bytes]:
    """(status, body) a peer route answers for a NotLeader/ServiceUnavailable raised above."""
    status = MISDIRECTED if isinstance(exc, NotLeader) else exc.status
    return status, encode_result(error=exc)
