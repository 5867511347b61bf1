"""Which cluster members may open an NBD export: the hosts whose servers use the volume.

With TLS, qemu-storage-daemon checks a client's certificate against the cluster CA, which every
member passes. On top of that an ``authz-list`` object (the NBD server's ``tls-authz``) admits only
the distinguished names ``CN=<host>`` of the hosts that use the export. That list changes while
the export runs (a server moves, another server attaches a multi-attach volume), so hvd replaces it
through the daemon's QMP monitor (``qom-set`` of the object's rules). QEMU checks the list at each
TLS handshake: clients already connected are never cut.

The monitor is a unix socket in hvd's private exports directory, bound relative to the daemon's
working directory and reached through ``/proc/self/fd/<directory fd>/``: a socket path must fit
in 108 bytes, a data directory's path need not.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hvd.errors import DriverError

AUTHZ_ID = "authz0"
QMP_TIMEOUT_S = 5.0
_DN_SPECIAL = frozenset(',+"\\<>;=')


def dn_of(host: str) -> str:
    """The distinguished name of ``host``'s certificate as QEMU (GnuTLS, RFC 4514) prints it: a
    host certificate's subject is its common name alone (hvd.cluster.tls)."""
    escaped = "".join(f"\\{c}" if c in _DN_SPECIAL else c for c in host)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return f"CN={escaped}"


def rules(clients: Iterable[str]) -> list[dict[str, str]]:
    """The allow rules of an authz-list whose default policy is deny."""
    return [{"match": dn_of(h), "policy": "allow", "format": "exact"} for h in sorted(set(clients))]


def daemon_argv(clients: Iterable[str], socket_name: str) -> list[str]:
    """qemu-storage-daemon options: the authz-list object and the QMP monitor on ``socket_name``
    (relative to the daemon's working directory). The NBD server names ``AUTHZ_ID`` as its tls-authz."""
    authz = {"qom-type": "authz-list", "id": AUTHZ_ID, "policy": "deny", "rules": rules(clients)}
    if "," in socket_name:
        raise DriverError(f"monitor socket name {socket_name} contains a comma")
    return ["--object", json.dumps(authz, separators=(",", ":")),
            "--chardev", f"socket,id=qmp,path={socket_name},server=on,wait=off", "--monitor", "chardev=qmp"]


async def set_clients(directory: Path, socket_name: str, clients: Iterable[str]) -> None:
    """Replace the running daemon's allowed hosts; DriverError when its monitor does not answer."""
    try:
        await asyncio.wait_for(_qom_set_rules(directory, socket_name, rules(clients)), QMP_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        raise DriverError(f"cannot set the NBD export's allowed hosts through {directory / socket_name}:"
                          f" {exc or type(exc).__name__}") from exc


async def _qom_set_rules(directory: Path, socket_name: str, new_rules: list[dict[str, str]]) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{dir_fd}/{socket_name}")
    finally:
        os.close(dir_fd)
    try:
        json.loads(await reader.readline())["QMP"]  # the greeting

        async def execute(command: str, arguments: dict[str, Any] | None = None) -> None:
            message: dict[str, Any] = {"execute": command}
            if arguments is not None:
                message["arguments"] = arguments
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            while True:  # events may come first
                line = await reader.readline()
                if not line:
                    raise ValueError("the monitor closed the connection")
                answer = json.loads(line)
                if "error" in answer:
                    raise ValueError(f"{command}: {answer['error'].get('desc', answer['error'])}")
                if "return" in answer:
                    return

        await execute("qmp_capabilities")
        await execute("qom-set", {"path": AUTHZ_ID, "property": "rules", "value": new_rules})
    finally:
        writer.close()
        await writer.wait_closed()
