"""NBD exports of this host's volumes for servers on other hosts (qemu-storage-daemon).

The rule: a server on the volume's own host opens the file or logical volume directly; a server on
any other host reaches it over NBD. The volume's host runs one ``qemu-storage-daemon`` per
exported volume, on its cluster address (the host of its peer URL) at a port from NBD_PORTS,
export name ``volume-<id>``, and the server's libvirt disk is a network disk to it.

Recorded and supervised: ``<data_dir>/nbd/<volume id>.json`` holds the port and the client hosts,
``<volume id>.pid`` the daemon's pid (written by qemu-storage-daemon itself, so a kill -9 of hvd
between the spawn and any bookkeeping still leaves the pid on disk). At start, and every
SUPERVISE_S, the attachments in the catalog decide: an export some attachment from another host
still needs is kept (adopted if its process runs, respawned on the same port if it died: the
guests on other hosts keep their disks across an hvd restart); any other is stopped and its record
removed. Stopping hvd leaves the exports running for the same reason.

With ``[tls] enabled`` an export is x509 TLS with the cluster CA, both ways: the daemon presents
this host's certificate and admits only clients presenting one of the same CA (``tls_dir`` is
QEMU's x509 directory, hvd.cluster.qemu_tls) whose name is a host using the export
(hvd.storage.volumes.nbd_authz: the catalog's users, and hosts that asked in the last GRACE_S),
and the server's disk says ``tls='yes'`` so its QEMU presents its host's certificate from the
directory qemu.conf names. An export keeps the mode it started with (recorded) until its last user
lets go: the guests using it opened it that way. Without TLS (a lab with ``insecure_plaintext``)
an export is plain NBD on the cluster address: anyone who reaches that address and port can read
and write the volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from hvd import spawn
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.errors import Conflict, DriverError, HvdError, NotFound
from hvd.storage.volumes import nbd_authz

log = logging.getLogger(__name__)

EXPORT_PATH = "/internal/v1/volumes/nbd-export"
UNEXPORT_PATH = "/internal/v1/volumes/nbd-unexport"
NBD_PORTS = range(10809, 10909)  # 10809 is NBD's registered port
SUPERVISE_S = 2.0
GRACE_S = 60.0  # a new export is kept this long before its attachment is recorded (attach in progress)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
QSD = "qemu-storage-daemon"


class ExportRequest(BaseModel):
    """To the volume's host: export this volume to ``client_host`` (or drop that client)."""

    volume_id: str = Field(max_length=64)
    client_host: str = Field(max_length=255)
    # a server of the volume's host still opens it directly (it is about to live-migrate away):
    # the export must not take QEMU's image lock, which that server holds until the switch-over
    unlocked: bool = False


class ExportAnswer(BaseModel):
    host: str
    port: int
    export: str
    tls: bool = False  # x509 with the cluster CA (an older host answers without it: plain)


class VolumePaths(Protocol):
    def connection_info(self, volume: dict[str, Any]) -> dict[str, Any]:
        """How this host opens the volume: {"type": "file"|"block", "path", "format"}."""


class Peers(Protocol):
    async def call(self, host: str, path: str, payload: Any, answer: Any, timeout: float) -> Any:
        """A signed peer call (hvd.cluster.peers.PeerCaller.call)."""


def export_name(volume_id: str) -> str:
    return f"volume-{volume_id}"


def _monitor_name(volume_id: str) -> str:
    """The export daemon's QMP socket, in the exports directory (its working directory)."""
    return f"{volume_id}.qmp"


def qsd_argv(info: dict[str, Any], listen: str, port: int, name: str, pidfile: Path,
             tls_dir: Path | None = None, locking: bool = True, clients: set[str] | None = None,
             monitor: str | None = None) -> list[str]:
    """qemu-storage-daemon serving one volume (its local connection info) over NBD: pure. With
    ``tls_dir`` (QEMU's x509 directory) the server speaks TLS only and requires a client
    certificate of the same CA (verify-peer); with ``clients`` and ``monitor`` too, only those
    hosts' certificates (hvd.storage.volumes.nbd_authz), changed later through the QMP monitor
    socket ``monitor`` (relative to the daemon's working directory). Without ``locking`` it opens
    the file or device while a QEMU of this host still holds it (a live migration leaving the
    volume's host)."""
    path = str(info["path"])
    if "," in path:
        raise DriverError(f"volume path {path} contains a comma, which qemu option syntax cannot carry")
    proto = "host_device" if info.get("type") == "block" else "file"
    fmt = str(info.get("format", "raw")) if info.get("type") == "file" else "raw"
    tls: list[str] = []
    server = f"addr.type=inet,addr.host={listen},addr.port={port}"
    if tls_dir is not None:
        if "," in str(tls_dir):
            raise DriverError(f"qemu_x509_dir {tls_dir} contains a comma, which qemu option syntax cannot carry")
        tls = ["--object", f"tls-creds-x509,id=tls0,dir={tls_dir},endpoint=server,verify-peer=on"]
        server += ",tls-creds=tls0"
        if clients is not None and monitor is not None:
            tls += nbd_authz.daemon_argv(clients, monitor)
            server += f",tls-authz={nbd_authz.AUTHZ_ID}"
    return [
        QSD,
        *tls,
        "--blockdev", f"driver={proto},node-name=proto,filename={path}" + ("" if locking else ",locking=off"),
        "--blockdev", f"driver={fmt},node-name=vol,file=proto",
        "--nbd-server", server,
        "--export", f"type=nbd,id=exp,node-name=vol,name={name},writable=on",
        "--pidfile", str(pidfile),
    ]


def wanted_clients(conn: Any, host: str) -> dict[str, set[str]]:
    """volume id → the hosts whose attachments of this host's volumes go over NBD (a server that
    live-migrated keeps its network disk, wherever it runs now)."""
    rows = fetch_all(conn, "SELECT a.volume_id, a.host FROM volume_attachments a JOIN volumes v ON v.id=a.volume_id"
                           " WHERE v.host=? AND json_extract(a.connection_info, '$.type')='nbd'", (host,))
    # a server live-migrating: its destination uses the export before the attachment says so,
    # whether the server opens the volume directly here (hvd.compute.volumes.prepare_move) or
    # already reaches it over NBD from a third host
    rows += fetch_all(conn, "SELECT a.volume_id, json_extract(i.extra, '$.migration.dest') AS host"
                            " FROM volume_attachments a JOIN volumes v ON v.id=a.volume_id"
                            " JOIN instances i ON i.id=a.instance_id WHERE v.host=? AND i.task_state='migrating'"
                            " AND json_extract(i.extra, '$.migration.dest') IS NOT NULL", (host,))
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["volume_id"], set()).add(r["host"])
    return out


def nbd_users(conn: Any, volume_id: str) -> list[str]:
    """Hosts of the volume's NBD attachments that are not being detached."""
    rows = fetch_all(conn, "SELECT host FROM volume_attachments WHERE volume_id=? AND status<>'detaching'"
                           " AND json_extract(connection_info, '$.type')='nbd'", (volume_id,))
    return [str(r["host"]) for r in rows]


def _alive(pid: int) -> bool:
    """A running process (a zombie counts as gone: PID 1 reaps lazily here)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_export(pid: int, name: str) -> bool:
    """Is ``pid`` our qemu-storage-daemon of export ``name`` (never kill a recycled pid)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(QSD.encode()) and any(name.encode() in a for a in argv)


@dataclass
class Export:
    volume_id: str
    port: int
    clients: set[str] = field(default_factory=set)
    tls: bool = False
    locking: bool = True  # see ExportRequest.unlocked (not recorded: a respawn after the move locks again)
    process: spawn.Child | None = None
    started: float = 0.0  # loop time of the last export request (see GRACE_S)
    asked: dict[str, float] = field(default_factory=dict)  # client -> loop time of its export request
    # the hosts the running daemon admits (nbd_authz); None: it admits every member (plain, or
    # started by an hvd without the list), set(): not known yet (adopted: set at the next round)
    admitted: set[str] | None = None


class NbdExports:
    """Both ends: ``export``/``unexport`` on the volume's host, ``connect``/``disconnect`` on the
    server's host (a peer call to the volume's host). ``tls_dir``: QEMU's x509 directory when
    ``[tls]`` is on (new exports are TLS), else None (plain)."""

    def __init__(self, host: str, listen: str, state_dir: Path, catalog: Any, volumes: VolumePaths | None,
                 peers: Peers | None, tls_dir: Path | None = None) -> None:
        self.host = host
        self.tls_dir = tls_dir
        self.listen = listen
        self.dir = state_dir
        self.catalog = catalog
        self.volumes = volumes
        self.peers = peers
        self._exports: dict[str, Export] = {}
        self._lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None

    @staticmethod
    def listen_address(peer_url: str | None, api_listen: str) -> str:
        """This host's address other hosts reach: its peer URL's host, else the API address."""
        host = urlparse(peer_url).hostname if peer_url else None
        return host or api_listen

    # --- records ---------------------------------------------------------------------------------

    def _record(self, volume_id: str) -> Path:
        return self.dir / f"{volume_id}.json"

    def _pidfile(self, volume_id: str) -> Path:
        return self.dir / f"{volume_id}.pid"

    def _save(self, exp: Export) -> None:
        tmp = self._record(exp.volume_id).with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": exp.port, "clients": sorted(exp.clients), "tls": exp.tls,
                                   "authz": exp.admitted is not None}))
        tmp.rename(self._record(exp.volume_id))

    def _pid(self, volume_id: str) -> int | None:
        try:
            return int(self._pidfile(volume_id).read_text().strip())
        except (OSError, ValueError):
            return None

    # --- the volume's host -----------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt or clean up what a previous run left, then supervise every SUPERVISE_S."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for record in self.dir.glob("*.json"):
            try:
                data = json.loads(record.read_text())
                self._exports[record.stem] = Export(record.stem, int(data["port"]), set(data["clients"]),
                                                    bool(data.get("tls", False)),
                                                    admitted=set() if data.get("authz") else None)
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable NBD export record %s: removed", record)
                record.unlink(missing_ok=True)
        await self.supervise()
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop supervising; the exports keep serving (guests on other hosts use them)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_S)
            try:
                await self.supervise()
            except Exception:  # the next round retries
                log.exception("NBD export supervision failed")

    async def supervise(self) -> None:
        """Make the running exports match the catalog's attachments from other hosts."""
        wanted = await self.catalog.read(wanted_clients, self.host)
        async with self._lock:
            now = asyncio.get_running_loop().time()
            for volume_id, exp in list(self._exports.items()):
                if volume_id not in wanted and now - exp.started < GRACE_S:
                    continue  # its attach is recording the attachment now
                if volume_id not in wanted:
                    log.info("NBD export of volume %s: no attachment needs it any more; stopping it", volume_id)
                    await self._stop(exp)
                    continue
                exp.clients = wanted[volume_id]
                self._save(exp)
                try:
                    if not self._running(exp):
                        log.warning("NBD export of volume %s is not running; starting it again on port %d",
                                    volume_id, exp.port)
                        await self._spawn(exp)
                    await self._admit(exp)
                except HvdError as exc:
                    log.error("NBD export of volume %s: %s", volume_id, exc.message)

    def _allowed(self, exp: Export) -> set[str]:
        """The hosts the export admits: its users in the catalog, and hosts that asked for it in the
        last GRACE_S (an attach or a move records its attachment after its export request)."""
        now = asyncio.get_running_loop().time()
        exp.asked = {h: t for h, t in exp.asked.items() if now - t < GRACE_S}
        return exp.clients | set(exp.asked)

    async def _admit(self, exp: Export) -> None:
        """Bring the running daemon's list of admitted hosts up to date (DriverError if it cannot)."""
        allowed = self._allowed(exp)
        if exp.admitted is None or exp.admitted == allowed:
            return
        await nbd_authz.set_clients(self.dir, _monitor_name(exp.volume_id), allowed)
        log.info("NBD export of volume %s admits %s", exp.volume_id, ", ".join(sorted(allowed)) or "nobody")
        exp.admitted = allowed

    def _running(self, exp: Export) -> bool:
        if exp.process is not None and exp.process.returncode is None:
            return True
        pid = self._pid(exp.volume_id)
        return pid is not None and _alive(pid) and _is_export(pid, export_name(exp.volume_id))

    async def export(self, req: ExportRequest) -> ExportAnswer:
        """Serve the volume to ``req.client_host`` (idempotent; one daemon per volume)."""
        async with self._lock:
            volume = await self.catalog.read(fetch_one, "SELECT * FROM volumes WHERE id=?", (req.volume_id,))
            if volume is None:
                raise NotFound(f"Volume {req.volume_id} could not be found")
            if volume["host"] != self.host:
                raise Conflict(f"volume {req.volume_id} lives on host {volume['host']}, not {self.host}")
            exp = self._exports.get(req.volume_id)
            if exp is None:
                used = {e.port for e in self._exports.values()}
                port = next((p for p in NBD_PORTS if p not in used), None)
                if port is None:
                    raise Conflict(f"host {self.host} exports {len(used)} volumes already (ports {NBD_PORTS.start}"
                                   f"-{NBD_PORTS.stop - 1})")
                exp = Export(req.volume_id, port, tls=self.tls_dir is not None, locking=not req.unlocked)
            elif req.unlocked and exp.locking and self._running(exp):
                raise Conflict(f"volume {req.volume_id} is exported with its image lock taken: a server of host"
                               f" {self.host} that opens it directly cannot move away while it is")
            exp.clients.add(req.client_host)
            exp.started = exp.asked[req.client_host] = asyncio.get_running_loop().time()
            self._exports[req.volume_id] = exp
            self._save(exp)  # recorded before the spawn: a crash now leaves a record, never an orphan
            if not self._running(exp):
                try:
                    await self._spawn(exp)
                except BaseException:
                    self._exports.pop(req.volume_id, None)
                    self._record(req.volume_id).unlink(missing_ok=True)
                    raise
            else:
                await self._admit(exp)  # before the answer: the client connects right after it
            return ExportAnswer(host=self.listen, port=exp.port, export=export_name(req.volume_id), tls=exp.tls)

    async def unexport(self, req: ExportRequest) -> ExportAnswer:
        """A server of ``req.client_host`` lets go of the volume (its attachment is detaching): the
        daemon stops unless another NBD attachment still uses it. The catalog counts, not the
        client list: a server that live-migrated asks from its new host."""
        async with self._lock:
            exp = self._exports.get(req.volume_id)
            if exp is None:
                return ExportAnswer(host=self.listen, port=0, export=export_name(req.volume_id))
            users = await self.catalog.read(nbd_users, req.volume_id)
            exp.clients.discard(req.client_host)
            exp.asked.pop(req.client_host, None)  # the next round takes it off the admitted list
            if users:
                self._save(exp)
            else:
                await self._stop(exp)
            return ExportAnswer(host=self.listen, port=exp.port, export=export_name(req.volume_id))

    async def _spawn(self, exp: Export) -> None:
        if self.volumes is None:
            raise Conflict(f"host {self.host} runs no volume service")
        volume = await self.catalog.read(fetch_one, "SELECT * FROM volumes WHERE id=?", (exp.volume_id,))
        if volume is None:
            raise NotFound(f"Volume {exp.volume_id} could not be found")
        info = self.volumes.connection_info(volume)
        pidfile = self._pidfile(exp.volume_id)
        pidfile.unlink(missing_ok=True)
        if exp.tls and self.tls_dir is None:
            raise Conflict(f"the NBD export of volume {exp.volume_id} was made with TLS, but [tls] is off now")
        admitted = self._allowed(exp) if exp.tls else None
        monitor = _monitor_name(exp.volume_id)
        (self.dir / monitor).unlink(missing_ok=True)  # a dead daemon's socket: the new one binds the name
        argv = qsd_argv(info, self.listen, exp.port, export_name(exp.volume_id), pidfile,
                        self.tls_dir if exp.tls else None, exp.locking, admitted, monitor)
        logfile = self.dir / f"{exp.volume_id}.log"
        try:
            with logfile.open("ab") as err_out:  # the daemon's own messages, for the operator
                # its own session: it outlives a restart of hvd; its monitor socket binds in self.dir
                proc = await spawn.start(argv, stderr=err_out, new_session=True, cwd=self.dir)
        except OSError as exc:
            raise DriverError(f"cannot run {QSD}: {exc} (Debian package qemu-system-common)") from exc
        exp.process = proc
        exp.admitted = admitted
        self._save(exp)
        # ready once it wrote its pidfile (after binding the port); an early exit is the error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while self._pid(exp.volume_id) != proc.pid:
            if proc.returncode is not None or loop.time() > deadline:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                err = logfile.read_text(errors="replace").strip()[-400:]
                raise DriverError(f"{QSD} for volume {exp.volume_id} did not start: {err or 'timeout'}")
            await asyncio.sleep(0.05)
        log.info("NBD export of volume %s on %s:%d%s (pid %d)", exp.volume_id, self.listen, exp.port,
                 " with TLS" if exp.tls else " WITHOUT TLS (anyone reaching it can read and write it)", proc.pid)

    async def _stop(self, exp: Export) -> None:
        pid = exp.process.pid if exp.process is not None else self._pid(exp.volume_id)
        if pid is not None and _alive(pid) and _is_export(pid, export_name(exp.volume_id)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_TIMEOUT_S
            while _alive(pid):
                if exp.process is not None and exp.process.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(exp.process.wait(), 0.1)
                    continue
                if loop.time() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    deadline = loop.time() + STOP_TIMEOUT_S
                await asyncio.sleep(0.05)
        self._exports.pop(exp.volume_id, None)
        self._record(exp.volume_id).unlink(missing_ok=True)
        self._pidfile(exp.volume_id).unlink(missing_ok=True)
        (self.dir / f"{exp.volume_id}.log").unlink(missing_ok=True)
        (self.dir / _monitor_name(exp.volume_id)).unlink(missing_ok=True)
        log.info("NBD export of volume %s stopped", exp.volume_id)

    # --- the server's host -----------------------------------------------------------------------

    async def connect(self, volume: dict[str, Any], client_host: str, unlocked: bool = False) -> dict[str, Any]:
        """The connection info of a network disk to ``volume``'s export on its own host
        (``unlocked``: see ExportRequest)."""
        if self.peers is None:
            raise Conflict(f"volume {volume['id']} lives on host {volume['host']}: reaching it needs the cluster")
        answer = await self.peers.call(volume["host"], EXPORT_PATH,
                                       ExportRequest(volume_id=volume["id"], client_host=client_host,
                                                     unlocked=unlocked),
                                       ExportAnswer, timeout=30.0)
        return {"type": "nbd", "host": answer.host, "port": answer.port, "export": answer.export, "tls": answer.tls}

    async def disconnect(self, volume_id: str, client_host: str) -> None:
        volume = await self.catalog.read(fetch_one, "SELECT host FROM volumes WHERE id=?", (volume_id,))
        if volume is None or self.peers is None:
            return  # gone: its host's supervision stops what no attachment needs
        await self.peers.call(volume["host"], UNEXPORT_PATH, ExportRequest(volume_id=volume_id,
                                                                            client_host=client_host),
                              ExportAnswer, timeout=30.0)
