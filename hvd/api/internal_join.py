"""The two peer routes a host without a cluster certificate may call: the CA certificate, and the
signing of its certificate in exchange for a join token (hvd/cluster/join_token.py).

Every other /internal route needs a client certificate of the cluster CA (internal.py); these
two are authenticated by what they carry instead: nothing secret is served without a valid,
unused token, and the joining host checks the CA against the fingerprint its token pins
before it sends the token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hvd.catalog.cmd_hosts import JoinTokenUse
from hvd.catalog.commands import Command
from hvd.cluster import join_token
from hvd.cluster.tls import CertificateError, TlsFiles, fingerprint, read_csr, sign_csr
from hvd.errors import BadRequest, Forbidden, ServiceUnavailable

log = logging.getLogger(__name__)

JOIN_PATH, CA_PATH = join_token.JOIN_PATH, join_token.CA_PATH
OPEN_PATHS = frozenset({JOIN_PATH, CA_PATH})  # reachable without a client certificate
MAX_JOIN_BODY = 64 * 1024


@dataclass
class JoinSigner:
    """What signing needs: the cluster key (token MACs), the TLS files, a way to commit the token's use."""

    cluster_key: bytes
    files: TlsFiles
    propose: Callable[[Command], Awaitable[dict[str, Any]]]


JOIN = web.AppKey("hvd.join", JoinSigner)
# the current Raft members and their peer addresses (set by internal.install): a token for any node
# may not name one of them, and no certificate may carry another member's name or address
MEMBERS: web.AppKey[Callable[[], Mapping[str, str]]] = web.AppKey("hvd.members")


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    token: str = Field(max_length=join_token.MAX_TOKEN_CHARS, description="From `hvd cluster join-token`")
    csr: str = Field(max_length=16384, description="PEM certificate signing request of the joining host")


async def ca_certificate(request: web.Request) -> web.Response:
    """The cluster CA certificate (public): a joining host checks it against its token's pin."""
    pem = await asyncio.to_thread(request.app[JOIN].files.ca_cert.read_bytes)
    return web.Response(body=pem, content_type="application/x-pem-file")


async def sign_join(request: web.Request) -> web.Response:
    """Check the token (MAC, CA pin, expiry, node), commit its one use, sign the CSR."""
    signer = request.app[JOIN]
    if request.content_length is not None and request.content_length > MAX_JOIN_BODY:
        raise BadRequest(f"a join request is at most {MAX_JOIN_BODY} bytes")
    raw = bytearray()  # read(n) answers what has arrived so far: read until the end (or past the limit)
    while len(raw) <= MAX_JOIN_BODY and (chunk := await request.content.read(MAX_JOIN_BODY + 1 - len(raw))):
        raw += chunk
    try:
        req = JoinRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(f"malformed join request: {exc.errors()[0]['msg']}") from None
    ca_pem = await asyncio.to_thread(signer.files.ca_cert.read_bytes)
    try:
        csr = read_csr(req.csr.encode())
        token = join_token.parse(req.token)
        join_token.check(token, signer.cluster_key, fingerprint(ca_pem), csr.node_id, time.time())
    except CertificateError as exc:
        raise BadRequest(str(exc)) from None
    except join_token.JoinTokenError as exc:
        raise Forbidden(str(exc)) from None
    members = request.app[MEMBERS]() if MEMBERS in request.app else {}
    refusal = member_refusal(token.node, csr.node_id, members) or san_refusal(csr.node_id, csr.sans, members)
    if refusal:
        raise Forbidden(refusal)
    if not signer.files.ca_key.is_file():
        raise ServiceUnavailable(f"this member holds no cluster CA key ({signer.files.ca_key}): join through the"
                                 " host that ran `hvd cluster init` (or one the CA key was copied to)")
    await signer.propose(JoinTokenUse(token_id=token.id, expires=token.expires, node_id=csr.node_id,
                                      now=int(time.time())))  # Conflict (409) when used already
    ca_key = await asyncio.to_thread(signer.files.ca_key.read_bytes)
    cert = sign_csr(ca_pem, ca_key, req.csr.encode(), dt.datetime.now(dt.UTC))
    log.warning("signed a host certificate for node %s (%s) with join token %s", csr.node_id,
                ", ".join(csr.sans), token.id)
    return web.json_response({"certificate": cert.decode(), "ca_certificate": ca_pem.decode()})


def member_refusal(token_node: str, csr_node: str, members: Iterable[str]) -> str:
    """Why a join token for ``token_node`` ("" = any node) may not get a certificate for
    ``csr_node`` when ``members`` are the cluster's members ("" = it may): a certificate names the
    node peers then trust it to be (cert_trust.py), so only a token made for a member renews that
    member's certificate; otherwise any token holder could become an existing member."""
    if not token_node and csr_node in members:
        return (f"node {csr_node} is a cluster member: renewing its certificate needs a join token made for it"
                f" (hvd cluster join-token --node {csr_node})")
    return ""


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower().rstrip(".")


def san_refusal(csr_node: str, sans: Iterable[str], members: Mapping[str, str]) -> str:
    """Why a certificate for ``csr_node`` may not carry ``sans`` ("" = it may): a peer checks a
    server's certificate against the host of the URL it calls, so a SAN naming another member
    (its node id or the host of its peer address) would let the holder pose as that member."""
    claimed: dict[str, str] = {}
    for node, address in members.items():
        if node == csr_node:
            continue
        claimed[_canonical(node)] = node
        host = urlsplit(address).hostname if "://" in address else None
        if host:
            claimed[_canonical(host)] = node
    for san in sans:
        owner = claimed.get(_canonical(san))
        if owner is not None:
            return (f"the certificate would name {san}, which is member {owner}'s:"
                    " a host certificate names only its own host")
    return ""


def install(app: web.Application, signer: JoinSigner) -> None:
    app[JOIN] = signer
    app.router.add_get(CA_PATH, ca_certificate)
    app.router.add_post(JOIN_PATH, sign_join)
