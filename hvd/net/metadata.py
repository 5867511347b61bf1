"""The metadata service: http://169.254.169.254 in the qdhcp- and qrouter- namespaces of this host.

Neutron runs a haproxy per namespace that adds the network id and the peer address as headers
and relays to a metadata agent. hvd needs neither: the daemon opens one listening socket per
network *inside* its qdhcp- namespace, and one per IPv4 leg (`qr-`) of each router hosted here,
bound to that device (from a short-lived thread that enters the namespace with setns(2),
binds and leaves; a socket stays in the namespace it was made in), and serves them from its
own event loop. The network is known from the socket that accepted the connection and the
guest from the peer address, which the kernel reports and nobody can forge with a header;
security groups' anti-spoofing drops packets whose source address is not their port's
(`hvd.net.nft`), so a guest cannot pose as another. A router's listeners take nothing that
arrives on its external leg.

No extra process means nothing to supervise and no orphans: the listeners live and die with
the daemon (a restart re-opens them at its first converge). The service's converge closes a
network's listener before its namespace is deleted (an open socket would keep the deleted
namespace alive, unnamed and useless) and re-opens it when the namespace was re-created.

Answers come from `hvd.compute.metadata_content`, the builder of the config drive too.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter

from hvd.catalog.cmd_compute import PASSWORD_MAX_BYTES, InstancePasswordSet
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.compute.metadata_content import InstanceFacts, answer, facts_of, is_password_path, network_data_nics
from hvd.errors import Conflict, NotFound
from hvd.identity.service import now_iso
from hvd.net.desired import instance_ports
from hvd.net.model import (
    METADATA_IP,
    METADATA_PORT,
    HostNetworkState,
    router_interface_name,
    router_namespace,
)
from hvd.net.plan import HostLayout

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"  # where `ip netns` keeps its named namespaces
CLONE_NEWNET = 0x40000000
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
SHUTDOWN_TIMEOUT_S = 1.0  # a guest's open keep-alive connection must not hold up a network's removal
# Catalog reads at once per listener: a guest hammering the service queues behind its network's
# own slots instead of filling the catalog's database thread for everyone.
READS_PER_LISTENER = 4
# Open connections per listener: each is a file descriptor of the daemon, so guests flooding the
# service must not hold them unboundedly; past it a new connection is closed at once (Neutron's
# metadata haproxy has maxconn 1024 per namespace).
MAX_CONNECTIONS_PER_LISTENER = 256
REQUESTS = Counter("hvd_metadata_requests_total",
                   "Metadata service requests, by result (ok, unknown, not_found; refused: connection over the limit)",
                   ["result"])


# --- which instance is asking (pure reads, on the catalog's thread) ---------------------------

def instance_at(conn: sqlite3.Connection, network_id: str, ip: str) -> str | None:
    """The instance whose port on `network_id` holds `ip`, or None."""
    row = conn.execute(
        "SELECT p.device_id FROM ports p JOIN ip_allocations a ON a.port_id=p.id"
        " WHERE p.network_id=? AND a.ip=? AND p.device_owner LIKE 'compute:%' AND p.device_id != ''",
        (network_id, ip)).fetchone()
    return str(row[0]) if row is not None else None


def instance_facts(conn: sqlite3.Connection, network_id: str, ip: str, default_az: str) -> InstanceFacts | None:
    """What the metadata documents say to the guest at `ip` on `network_id` (None: no such guest).
    The availability zone defaults to that of the instance's host, as on its config drive."""
    instance_id = instance_at(conn, network_id, ip)
    if instance_id is None:
        return None
    inst = fetch_one(conn, "SELECT * FROM instances WHERE id=? AND deleted_at IS NULL", (instance_id,))
    if inst is None:
        return None
    host = fetch_one(conn, "SELECT availability_zone FROM hosts WHERE name=?", (inst["host"] or "",))
    ports = instance_ports(conn, instance_id)
    port_ids = [p["id"] for p in ports]
    groups = fetch_all(
        conn, f"SELECT DISTINCT g.name FROM port_security_groups s JOIN security_groups g ON g.id=s.group_id"
        f" WHERE s.port_id IN ({','.join('?' * len(port_ids)) or 'NULL'}) ORDER BY g.name", tuple(port_ids))
    return facts_of(inst, availability_zone=host["availability_zone"] if host else default_az,
                    nics=network_data_nics(ports),
                    fixed_ips=[f["ip"] for p in ports for f in p["fixed_ips"]],
                    floating_ips=[f for p in ports for f in p["floating_ips"]],
                    security_groups=[g["name"] for g in groups])


# --- listeners: which to close and open (pure) ------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """Where one listener serves one network: a namespace, and in a router the `qr-` device it is
    bound to (None in a qdhcp- namespace, whose only device is the network's)."""

    netns: str
    network_id: str
    device: str | None = None


def metadata_endpoints(state: HostNetworkState, layout: HostLayout) -> dict[str, Endpoint]:
    """Listener key (`network:<id>`, `router:<id>:<port id>`) -> endpoint, for `state`
    spelled out as `layout` (`hvd.net.plan.desired_layout`)."""
    if not state.metadata:
        return {}
    out = {f"network:{nid}": Endpoint(d.netns, nid) for nid, d in layout.dhcp.items() if d.metadata}
    subnets = {sub.id: sub for sub in state.subnets}
    for router in state.routers:
        for iface in router.interfaces:
            subnet = subnets.get(iface.subnet_id)
            if subnet is not None and subnet.ip_version == 4:
                out[f"router:{router.id}:{iface.port_id}"] = Endpoint(
                    router_namespace(router.id, state.netns_prefix), subnet.network_id,
                    router_interface_name(iface.port_id))
    return out


@dataclass(frozen=True)
class ListenerState:
    """An open listener: its endpoint, and the inode of the namespace it was opened in."""

    endpoint: Endpoint
    inode: int


def stale_listeners(wanted: Mapping[str, Endpoint], have: Mapping[str, ListenerState],
                    inodes: Mapping[str, int | None]) -> list[str]:
    """Listeners that must close: no longer wanted (or wanted elsewhere), or their namespace is
    gone or is a new one under the same name (`inodes`: namespace -> current inode, None if absent)."""
    return sorted(key for key, st in have.items()
                  if wanted.get(key) != st.endpoint or inodes.get(st.endpoint.netns) != st.inode)


def missing_listeners(wanted: Mapping[str, Endpoint], have: Mapping[str, ListenerState],
                      inodes: Mapping[str, int | None]) -> list[str]:
    """Wanted listeners not open yet whose namespace exists."""
    return sorted(key for key, ep in wanted.items() if key not in have and inodes.get(ep.netns) is not None)


# --- a socket inside a namespace (adapter) ----------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_inode(netns: str) -> int | None:
    """The inode identifying the namespace named `netns` now (None if there is none)."""
    try:
        return os.stat(os.path.join(NETNS_DIR, netns)).st_ino
    except FileNotFoundError:
        return None


def listen_in_netns(netns: str, address: str, port: int, device: str | None = None) -> tuple[socket.socket, int]:
    """A listening TCP socket bound to `address:port` (and to `device`, if given) inside
    namespace `netns`, and the namespace's inode. Blocking (call it in a worker thread).

    setns(2) switches the calling thread only, so the switch happens in a new thread made for
    this one call: no pooled or event-loop thread ever runs in another namespace, even if
    switching back failed (the thread ends either way).
    """
    result: list[tuple[socket.socket, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with open("/proc/thread-self/ns/net", "rb") as home, open(os.path.join(NETNS_DIR, netns), "rb") as ns:
                inode = os.fstat(ns.fileno()).st_ino
                _setns(ns.fileno())
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    # bind even while the address is missing from the device (a failed step): serves once it is there
                    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                    if device is not None:  # a router leg: only what arrives on it, so one network per socket
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
                    sock.bind((address, port))
                    sock.listen(128)
                    sock.setblocking(False)
                    _setns(home.fileno())
                except BaseException:
                    sock.close()
                    raise
                result.append((sock, inode))
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"netns-listen-{netns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# --- the HTTP side ----------------------------------------------------------------------------

NETWORK_ID = web.AppKey("network_id", str)
READ_SLOTS = web.AppKey("read_slots", asyncio.Semaphore)


@dataclass
class _Listener:
    state: ListenerState
    runner: web.AppRunner
    server: asyncio.AbstractServer


class _Refused(asyncio.Protocol):
    """A connection over the listener's limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _capped(handlers: web.Server, limit: int) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory serving `handlers` while fewer than `limit` connections are open."""

    def factory() -> asyncio.BaseProtocol:
        if len(handlers.connections) >= limit:
            REQUESTS.labels("refused").inc()
            return _Refused()
        return handlers()

    return factory


class MetadataServer:
    """Serves the metadata documents on one listener per network (see the module docstring).

    `sync_before_apply` / `sync_after_apply` bracket each network converge with the endpoints
    that should serve metadata on this host (`metadata_endpoints`); `close` ends them all.
    """

    def __init__(self, catalog: Catalog, default_az: str, *, address: str = METADATA_IP,
                 port: int = METADATA_PORT) -> None:
        self.catalog = catalog
        self.default_az = default_az
        self.address = address
        self.port = port
        self.listeners: dict[str, _Listener] = {}

    @property
    def serving(self) -> dict[str, Endpoint]:
        """Listener key -> endpoint of every open listener."""
        return {key: lst.state.endpoint for key, lst in self.listeners.items()}

    def _inodes(self, names: Sequence[str]) -> dict[str, int | None]:
        return {name: netns_inode(name) for name in set(names)}

    async def sync_before_apply(self, wanted: Mapping[str, Endpoint]) -> None:
        """Close the listeners going away (before their namespace is deleted)."""
        have = {key: lst.state for key, lst in self.listeners.items()}
        inodes = await asyncio.to_thread(self._inodes, [st.endpoint.netns for st in have.values()])
        for key in stale_listeners(wanted, have, inodes):
            await self._close(key)

    async def sync_after_apply(self, wanted: Mapping[str, Endpoint]) -> None:
        """Open the listeners wanted; a failure is logged and retried by the next converge
        (metadata must not hold back the network itself)."""
        await self.sync_before_apply(wanted)  # a namespace re-created by this converge: reopen
        have = {key: lst.state for key, lst in self.listeners.items()}
        inodes = await asyncio.to_thread(self._inodes, [ep.netns for ep in wanted.values()])
        for key in missing_listeners(wanted, have, inodes):
            try:
                await self._open(key, wanted[key])
            except OSError as exc:
                log.error("metadata service %s in %s: %s (retried next converge)", key, wanted[key].netns, exc)

    async def close(self) -> None:
        for nid in sorted(self.listeners):
            await self._close(nid)

    async def _open(self, key: str, endpoint: Endpoint) -> None:
        sock, inode = await asyncio.to_thread(listen_in_netns, endpoint.netns, self.address, self.port,
                                              endpoint.device)
        app = web.Application(client_max_size=PASSWORD_MAX_BYTES)  # the only body a guest sends
        app[NETWORK_ID] = endpoint.network_id
        app[READ_SLOTS] = asyncio.Semaphore(READS_PER_LISTENER)
        app.router.add_get("/{path:.*}", self._handle)
        app.router.add_post("/{path:.*}", self._post_password)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        try:
            await runner.setup()
            assert runner.server is not None
            # not a SockSite: it has no limit on open connections
            server = await asyncio.get_running_loop().create_server(
                _capped(runner.server, MAX_CONNECTIONS_PER_LISTENER), sock=sock)
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self.listeners[key] = _Listener(ListenerState(endpoint, inode), runner, server)
        log.info("metadata service %s (network %s) listening on %s:%d in %s%s", key, endpoint.network_id,
                 self.address, self.port, endpoint.netns, f" on {endpoint.device}" if endpoint.device else "")

    async def _close(self, key: str) -> None:
        listener = self.listeners.pop(key)
        listener.server.close()  # the listening socket: no new connections
        await listener.runner.cleanup()  # ends the open ones, within SHUTDOWN_TIMEOUT_S
        await listener.server.wait_closed()
        log.info("metadata service %s closed", key)

    async def _asking(self, request: web.Request) -> InstanceFacts:
        """The instance at the request's source address on the listener's network (else 404)."""
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        network_id = request.app[NETWORK_ID]
        if not peer:
            raise web.HTTPBadRequest(text="the peer address is unknown")
        async with request.app[READ_SLOTS]:
            facts = await self.catalog.read(instance_facts, network_id, str(peer[0]), self.default_az)
        if facts is None:
            REQUESTS.labels("unknown").inc()
            log.debug("metadata request from %s on network %s: no instance there", peer[0], network_id)
            raise web.HTTPNotFound(text=f"no instance has address {peer[0]} on this network\n")
        return facts

    async def _handle(self, request: web.Request) -> web.Response:
        facts = await self._asking(request)
        got = answer(facts, request.path)
        if got is None:
            REQUESTS.labels("not_found").inc()
            raise web.HTTPNotFound(text=f"{request.path} is not a metadata document\n")
        REQUESTS.labels("ok").inc()
        body, content_type = got
        return web.Response(body=body, content_type=content_type)

    async def _post_password(self, request: web.Request) -> web.Response:
        """The guest stores its encrypted password, once (Nova's metadata password API)."""
        if not is_password_path(request.path):
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        facts = await self._asking(request)
        if facts.password:
            raise web.HTTPConflict(text="this instance already has a password\n")
        body = await request.read()  # over PASSWORD_MAX_BYTES: aiohttp answers 413
        try:
            password = body.decode()
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text="the password must be UTF-8 text (an encrypted, base64-encoded"
                                          " password)\n") from None
        if not password:
            raise web.HTTPBadRequest(text="the password is empty\n")
        try:
            await self.catalog.propose(InstancePasswordSet(id=facts.uuid, password=password, updated_at=now_iso()))
        except Conflict:  # another post got in first
            raise web.HTTPConflict(text="this instance already has a password\n") from None
        except NotFound:
            raise web.HTTPNotFound(text="the instance is gone\n") from None
        REQUESTS.labels("ok").inc()
        log.info("instance %s stored its password through the metadata service", facts.uuid)
        return web.Response(text="")
