"""The one typed, signed client every host-to-host call uses (besides the Raft stream).

A call names the target host; its address comes from the replicated catalog (the host's Raft
member address, else the API URL it registered). Requests and answers are pydantic models; a
typed error raised on the other side is raised again here by class name (errors.from_wire).
Every call carries the caller's request id, and the caller's applied catalog index, so the
target waits until its replica has seen what the caller saw before it reads anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from hvd.catalog.service import Catalog
from hvd.cluster.keys import KeySource, key_source
from hvd.cluster.peer_auth import sign_headers
from hvd.cluster.tls import peer_scheme
from hvd.errors import HvdError, NotFound, ServiceUnavailable
from hvd.log import request_id_var

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

APPLIED_HEADER = "X-Hvd-Applied-Index"  # the caller's applied index: wait for it before reading
FORWARDED_HEADER = "X-Hvd-Forwarded-By"  # a forwarded public request: never forward it again
REQUEST_ID_HEADER = "X-Request-Id"
PeerErrors = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class PeerUnreachable(ServiceUnavailable):
    """The target host did not answer (refused, reset, timed out); nothing is known of the outcome."""


class PeerCaller:
    """Signed calls from this host to the daemon of another host, by host name."""

    def __init__(self, host: str, node_id: str, key: bytes | KeySource, catalog: Catalog,
                 member_addresses: Callable[[], dict[str, str]] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``key``: the peer HMAC key, or this host's PeerKeys (keys.py: the signing key follows the
        cluster's protocol level during an upgrade from 0.1.0); ``ssl_context``: the cluster's client
        TLS context (mutual TLS), None on a loopback cluster without TLS."""
        self.host = host
        self.node_id = node_id
        self._keys = key_source(key)
        self._catalog = catalog
        self._member_addresses = member_addresses or (lambda: {})
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # every host-to-host call (forwarding, builds, images, disks, events) goes through this session
        connector = aiohttp.TCPConnector(limit_per_host=64, ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ServiceUnavailable("the peer client is not running")
        return self._session

    def applied_index(self) -> int:
        driver = getattr(self._catalog.coordinator, "driver", None)
        return int(getattr(driver, "applied_index", 0))

    async def url_of(self, host: str) -> str:
        """Base URL of ``host``'s daemon: its Raft member address, else its registered API URL."""
        row = await self._catalog.read(
            lambda c: c.execute("SELECT node_id, api_url FROM hosts WHERE name=?", (host,)).fetchone()
        )
        if row is None:
            raise NotFound(f"Host {host} could not be found")
        return peer_scheme((self._member_addresses().get(row[0]) or row[1]).rstrip("/"), self._ssl is not None)

    async def url_of_node(self, node_id: str) -> str:
        address = self._member_addresses().get(node_id)
        if address:
            return peer_scheme(address.rstrip("/"), self._ssl is not None)
        row = await self._catalog.read(
            lambda c: c.execute("SELECT api_url FROM hosts WHERE node_id=?", (node_id,)).fetchone()
        )
        if row is None:
            raise ServiceUnavailable(f"the address of cluster member {node_id} is not known yet")
        return peer_scheme(str(row[0]).rstrip("/"), self._ssl is not None)

    def signed(self, method: str, path: str, body: bytes) -> dict[str, str]:
        headers = sign_headers(self._keys.signing(), self.node_id, method, path, body)
        headers[APPLIED_HEADER] = str(self.applied_index())
        headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        return headers

    async def call(self, host: str, path: str, payload: BaseModel, answer: type[T], timeout: float,
                   *, node_id: str | None = None) -> T:
        """POST ``payload`` to ``path`` on ``host`` (or on the member ``node_id``) and return its
        answer; raises the remote HvdError, or PeerUnreachable when no answer came."""
        base = await (self.url_of_node(node_id) if node_id else self.url_of(host))
        target = node_id or host
        body = payload.model_dump_json().encode()
        headers = self.signed("POST", path, body)
        headers["Content-Type"] = "application/json"
        try:
            async with self.session.post(base + path, data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                status = resp.status
        except PeerErrors as exc:
            raise PeerUnreachable(f"host {target} did not answer {path}: {type(exc).__name__} {exc}".strip(),
                                  host=target) from exc
        if status == 200:
            return answer.model_validate_json(raw)
        raise wire_error(raw, f"host {target} answered HTTP {status} to {path}")


def wire_error(raw: bytes, fallback: str) -> HvdError:
    """The typed error a peer answered (``{"error": {"name", "message", "details"}}``, see
    catalog.state.encode_result), else a ServiceUnavailable naming ``fallback``."""
    try:
        err: Any = json.loads(raw)["error"]
        if "name" in err:
            return HvdError.from_wire(err)
        return ServiceUnavailable(f"{fallback}: {err['message']}")
    except (ValueError, KeyError, TypeError):
        return ServiceUnavailable(fallback)
