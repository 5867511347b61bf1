"""How a host reaches a volume attached to a server it runs: pure decisions, no I/O.

The rule (hvd.storage.volumes.nbd): a server on the volume's own host opens the file or logical
volume directly; a server on any other host reaches it over NBD from an export on the volume's
host. A host about to define a server's domain after the server ran elsewhere or nowhere (a cold
move's destination, the source of a reverted cold move, an unshelve's host) reconnects each
attachment by that rule (``reconnect``). A shelved-offloaded server runs nowhere: its attachments
hold no connection (``OFFLOADED``), so no export is kept for them; its unshelve connects them again
on whichever host it lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hvd.storage.volumes import states as st

Reach = Literal["direct", "nbd"]
Recorded = Literal["direct", "nbd", "none"]
# the connection info of an attachment whose server is shelved-offloaded: no host opens the volume
OFFLOADED: dict[str, Any] = {"type": "none"}


def reach(volume_host: str, server_host: str) -> Reach:
    """How a server on ``server_host`` opens a volume of ``volume_host``: directly (the file or LV)
    on the volume's own host, else over NBD from an export on the volume's host."""
    return "direct" if volume_host == server_host else "nbd"


def recorded(connection_info: Mapping[str, Any]) -> Recorded:
    """What an attachment's connection info is: NBD, no connection (offloaded), else direct."""
    kind = connection_info.get("type")
    if kind == "nbd":
        return "nbd"
    if kind == OFFLOADED["type"]:
        return "none"
    return "direct"


@dataclass(frozen=True)
class Reconnect:
    """What a server's new host does with one attachment before it defines the domain."""

    reach: Reach  # how this host opens the volume from now on
    export: bool  # ask the volume's host for its export (starts it, or answers the running one's port)
    release_export: bool  # the NBD export the attachment used so far is let go of, before the volume is opened


def reconnect(volume_host: str, server_host: str, was: Recorded) -> Reconnect:
    """The step for an attachment recorded as ``was`` whose server is defined on ``server_host``.

    Back on the volume's host, an NBD attachment opens the volume directly and lets go of the
    export first: the export holds QEMU's image lock, which the new domain takes (the server's
    previous domain, the export's client, is gone by then). Anywhere else the volume's host is
    always asked for the export: it may have been stopped (an offloaded server) and an export
    request is idempotent.
    """
    how = reach(volume_host, server_host)
    return Reconnect(reach=how, export=how == "nbd", release_export=was == "nbd" and how == "direct")


def reconnect_blocker(attachment: Mapping[str, Any]) -> str | None:
    """Why an attachment cannot be reconnected on another host now, or None: only attached ones
    move (an attach or detach half-way belongs to the host that runs it)."""
    if attachment["status"] != st.ATT_ATTACHED or not attachment["device"]:
        return (f"volume {attachment['volume_id']} of instance {attachment['instance_id']} is"
                f" {attachment['status']}: wait for its attach or detach to end")
    return None
