"""/v1/cluster: the Raft membership of the control plane (admin only).

Adding a host: start it with an empty data_dir, ``[cluster] join = true``, the same cluster_key and
``peers`` naming a reachable member; then ``POST /v1/cluster/members`` on any member. The new host
is checked first (it must answer, signed with the cluster key, as that node id, with no membership
of its own), joins as a learner, receives the catalog, and is promoted to voter once it has caught
up. Removing a host and handing leadership over (before maintenance) work the same from any member.
Removing a host also revokes its host certificates (every one issued until then): it needs a new one to
come back. ``/v1/cluster/revocations`` lists and adds revocations (hvd/cluster/cert_trust.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hvd.api.forward import PEERS
from hvd.api.helpers import context, json_response, parse_body
from hvd.api.internal import GOSSIP_LEAVE_PATH
from hvd.api.routing import Router
from hvd.api.services import services
from hvd.catalog.cmd_hosts import CertRevoke
from hvd.catalog.protocol import PROTOCOL, MemberLevel
from hvd.catalog.service import Catalog
from hvd.cluster.cert_trust import normalize_serial, now_s, read_revocations, revocation_rows
from hvd.cluster.coordinator import RaftCoordinator
from hvd.cluster.protocol_gate import ProtocolGate
from hvd.errors import HvdError, NotFound, NotImplementedYet

log = logging.getLogger(__name__)

NODE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_PEER_URL = re.compile(r"^https?://[A-Za-z0-9._\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class Member(BaseModel):
    id: str
    role: Literal["voter", "learner"]
    address: str = Field(description="Where its peer API listens ('' = unknown to this member)")
    leader: bool
    match_index: int | None = Field(description="Log index replicated on it (known by the leader only)")
    hvd_version: str | None = Field(description="The hvd release it reports in gossip (null = not heard from yet)")
    protocol: int | None = Field(description="The catalog protocol level it applies (null = not heard from yet)")


class ProtocolView(BaseModel):
    usable: int = Field(description="The newest catalog protocol level every member applies: commands of a"
                                    " later level are refused (409) until the members behind are upgraded")
    newest: int = Field(description="The newest level the answering host's build applies")
    behind: list[str] = Field(description="Members below `newest`: a rolling upgrade is done when this is empty")


class ClusterView(BaseModel):
    node_id: str = Field(description="The member that answered")
    leader: str | None
    term: int
    commit_index: int
    members: list[Member]
    protocol: ProtocolView


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=NODE_ID, description="The new member's [cluster] node_id (or host name)")
    url: str = Field(description="Its API base URL, e.g. https://10.0.0.4:8774")
    role: Literal["voter", "learner"] = Field("voter", description="Learners replicate but never vote")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not _PEER_URL.match(url.rstrip("/")):
            raise ValueError("url must be http(s)://host[:port] with no path")
        return url.rstrip("/")


class LeaderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(pattern=NODE_ID, description="The voter that should lead")


def _coordinator(request: web.Request, rule: str) -> RaftCoordinator:
    svc, ctx = services(request), context(request)
    svc.policy.enforce(ctx.roles, rule)
    coordinator = svc.catalog.coordinator
    if not isinstance(coordinator, RaftCoordinator):
        raise NotImplementedYet("this catalog has no Raft membership")
    return coordinator


def _view(coordinator: RaftCoordinator) -> dict[str, object]:
    node = coordinator.driver.node
    gate = coordinator.gate or ProtocolGate(coordinator.node_id, PROTOCOL, coordinator.member_ids)
    levels = gate.cluster_level()
    heard = {m.node_id: m for m in levels.members}
    members = []
    for member in coordinator.members():
        level = heard.get(member["id"]) or MemberLevel(member["id"], None)
        members.append({**member, "protocol": level.protocol, "hvd_version": level.hvd_version or None})
    protocol = {"usable": levels.usable, "newest": PROTOCOL,
                "behind": [m.node_id for m in levels.behind(PROTOCOL)]}
    return {"node_id": coordinator.node_id, "leader": coordinator.leader_id, "term": coordinator.term,
            "commit_index": node.commit, "members": members, "protocol": protocol}


async def show_cluster(request: web.Request) -> web.Response:
    return json_response(_view(_coordinator(request, "cluster:read")))


async def add_member(request: web.Request) -> web.Response:
    coordinator = _coordinator(request, "cluster:manage")
    body = await parse_body(request, MemberIn)
    await coordinator.check_joiner(body.id, body.url)
    await coordinator.change_membership({"op": "add", "id": body.id, "address": body.url,
                                         "voter": body.role == "voter"})
    return json_response(_view(coordinator), status=201)


async def remove_member(request: web.Request) -> web.Response:
    coordinator = _coordinator(request, "cluster:manage")
    member = request.match_info["id"]
    if member not in coordinator.driver.node.conf.members():
        raise NotFound(f"Cluster member {member} could not be found")
    await coordinator.change_membership({"op": "remove", "id": member})
    await _revoke_removed(services(request).catalog, member)
    peers = services(request).extra.get(PEERS)
    if peers is not None:  # best effort: a host that is down leaves gossip as dead anyway
        try:
            await peers.call("", GOSSIP_LEAVE_PATH, _Notice(), _Notice, timeout=5.0, node_id=member)
        except HvdError as exc:
            log.info("removed member %s was not told to leave gossip: %s", member, exc.message)
    return web.Response(status=204)


class _Notice(BaseModel):
    ok: bool = True


async def _revoke_removed(catalog: Catalog, member: str) -> None:
    """A removed member's certificates stop working on peer routes at once (hvd/cluster/cert_trust.py)."""
    try:
        await catalog.propose(CertRevoke(node=member, before=now_s()))
    except HvdError as exc:  # the removal stands (e.g. a rolling upgrade holds level-2 commands back)
        log.warning("removed member %s keeps working certificates until `hvd cluster revoke-cert --node %s`"
                    " succeeds: %s", member, member, exc.message)


class RevocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str | None = Field(None, pattern=NODE_ID, description="Refuse every certificate of this node id issued"
                             " until now (it needs a new one: `hvd cluster join` with a token for it)")
    serial: str | None = Field(None, max_length=100, description="Refuse the certificate with this serial"
                               " (hex, as `openssl x509 -noout -serial` prints it)")

    @model_validator(mode="after")
    def _one(self) -> RevocationIn:
        if (self.node is None) == (self.serial is None):
            raise ValueError("name either a node or a serial")
        if self.serial is not None:
            self.serial = normalize_serial(self.serial)
        return self


class Revocation(BaseModel):
    node: str | None = Field(description="Certificates of this node issued before `issued_before` are refused")
    serial: str | None = Field(description="The certificate with this serial is refused")
    issued_before: str | None


class RevocationList(BaseModel):
    revocations: list[Revocation]
    next: str | None = None


async def list_revocations(request: web.Request) -> web.Response:
    _coordinator(request, "cluster:read")
    revoked = await services(request).catalog.read(read_revocations)
    return json_response({"revocations": revocation_rows(revoked), "next": None})


async def revoke_certificate(request: web.Request) -> web.Response:
    """Refuse a node's certificates (all issued until now) or one certificate on every member's peer routes."""
    _coordinator(request, "cluster:manage")
    body = await parse_body(request, RevocationIn)
    result = await services(request).catalog.propose(CertRevoke(node=body.node or "", serial=body.serial or "",
                                                                before=now_s()))
    floor = dt.datetime.fromtimestamp(result["before"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json_response({"node": body.node, "serial": body.serial, "issued_before": floor if body.node else None},
                         status=201)


async def transfer_leader(request: web.Request) -> web.Response:
    coordinator = _coordinator(request, "cluster:manage")
    body = await parse_body(request, LeaderIn)
    if body.to not in coordinator.driver.node.conf.members():
        raise NotFound(f"Cluster member {body.to} could not be found")
    if body.to != coordinator.leader_id:
        await coordinator.change_membership({"op": "transfer", "id": body.to})
    return json_response(_view(coordinator))


def register(router: Router) -> None:
    t = "cluster"
    router.add("GET", "/v1/cluster", show_cluster, "Show the control plane's members and leader",
               response=ClusterView, tag=t)
    router.add("POST", "/v1/cluster/members", add_member, "Add a host started with [cluster] join = true",
               body=MemberIn, response=ClusterView, status=201, tag=t)
    router.add("DELETE", "/v1/cluster/members/{id}", remove_member, "Remove a member", status=204, tag=t)
    router.add("POST", "/v1/cluster/leader", transfer_leader, "Hand leadership to another voter",
               body=LeaderIn, response=ClusterView, tag=t)
    router.add("GET", "/v1/cluster/revocations", list_revocations, "List revoked host certificates",
               response=RevocationList, tag=t)
    router.add("POST", "/v1/cluster/revocations", revoke_certificate,
               "Revoke a node's host certificates or one certificate (peer routes refuse them)",
               body=RevocationIn, response=Revocation, status=201, tag=t)
