"""Volume, snapshot, backup and attachment states as data, and the pure decisions over them.

Cinder's volume states; an operation moves a volume from one of its ``allowed`` states through a
transitional state to a final one. The catalog's apply handlers (hvd/catalog/cmd_volumes.py) and
the API use these tables, so the refusals are the same everywhere and tested in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hvd.errors import BadRequest, Conflict, InvalidState

CREATING = "creating"
AVAILABLE = "available"
RESERVED = "reserved"
ATTACHING = "attaching"
IN_USE = "in-use"
DETACHING = "detaching"
EXTENDING = "extending"
DELETING = "deleting"
ERROR = "error"
ERROR_DELETING = "error_deleting"
BACKING_UP = "backing-up"
RESTORING_BACKUP = "restoring-backup"
UPLOADING = "uploading"  # its data is being copied into a new image (Cinder's upload-to-image)

VOLUME_STATES = (CREATING, AVAILABLE, RESERVED, ATTACHING, IN_USE, DETACHING, EXTENDING, DELETING, ERROR,
                 ERROR_DELETING, BACKING_UP, RESTORING_BACKUP, UPLOADING)
# states a daemon's crash can leave a volume in while this host's volume service worked on it
TRANSITIONAL = frozenset({CREATING, EXTENDING, DELETING, BACKING_UP, RESTORING_BACKUP, UPLOADING})
# states in which a volume has (or is getting) attachments: the compute side owns these moves
ATTACHED_STATES = frozenset({RESERVED, ATTACHING, IN_USE, DETACHING})

# attachment states (volume_attachments.status)
ATT_RESERVED = "reserved"
ATT_ATTACHING = "attaching"
ATT_ATTACHED = "attached"
ATT_DETACHING = "detaching"
ATTACHMENT_STATES = (ATT_RESERVED, ATT_ATTACHING, ATT_ATTACHED, ATT_DETACHING)

# snapshot and backup states
SNAP_STATES = (CREATING, AVAILABLE, DELETING, ERROR, ERROR_DELETING)
BACKUP_RESTORING = "restoring"
BACKUP_STATES = (CREATING, AVAILABLE, BACKUP_RESTORING, DELETING, ERROR, ERROR_DELETING)


@dataclass(frozen=True)
class Operation:
    """An operation on a volume: from which states, through which state, to which ones."""

    name: str
    allowed: frozenset[str]
    during: str
    # final state on success; None = the state the volume had before (kept in previous_status)
    success: str | None
    # final state on failure; None = the state the volume had before
    failure: str | None
    forced_allowed: frozenset[str] = frozenset()  # more states allowed with force=true


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("delete", frozenset({AVAILABLE, ERROR, ERROR_DELETING}), DELETING, None, ERROR_DELETING),
        # a failed extend leaves the data as it was: back to available, the error in the message
        Operation("extend", frozenset({AVAILABLE}), EXTENDING, AVAILABLE, AVAILABLE),
        # online extend of an attached volume (the compute side resizes the guest's disk)
        Operation("extend_online", frozenset({IN_USE}), EXTENDING, IN_USE, IN_USE),
        Operation("backup", frozenset({AVAILABLE}), BACKING_UP, None, None, forced_allowed=frozenset({IN_USE})),
        Operation("restore", frozenset({AVAILABLE}), RESTORING_BACKUP, AVAILABLE, ERROR),
        # a copy into a new image: the volume's data is only read, so it ends as it was either way
        Operation("upload", frozenset({AVAILABLE}), UPLOADING, None, None, forced_allowed=frozenset({IN_USE})),
    )
}


def check_operation(op_name: str, status: str, *, force: bool = False, volume_id: str = "") -> Operation:
    """The operation if ``status`` allows it (with ``force`` for the forced states); else InvalidState."""
    op = OPERATIONS[op_name]
    if status in op.allowed or (force and status in op.forced_allowed):
        return op
    what = f"volume {volume_id}" if volume_id else "the volume"
    hint = " (use force=true for an attached volume)" if status in op.forced_allowed else ""
    allowed = ", ".join(sorted(op.allowed | op.forced_allowed))
    raise InvalidState(f"cannot {op_name.replace('_', ' ')} {what}: it is {status}; allowed from {allowed}{hint}",
                       status=status)


def final_status(op_name: str, ok: bool, previous: str | None) -> str:
    """The status a volume ends in after ``op_name`` succeeded or failed (``previous``: before it)."""
    op = OPERATIONS[op_name]
    target = op.success if ok else op.failure
    if target is None:
        return previous or AVAILABLE
    return target


def restore_status(ok: bool, previous: str | None, untouched: bool) -> str:
    """The status after a restore: ``final_status``, except that a restore into an existing volume
    (``previous`` set) that failed before writing a byte of it leaves the volume as it was."""
    if not ok and untouched and previous is not None:
        return previous
    return final_status("restore", ok, previous)


def check_extend_size(current_gb: int, new_gb: int) -> None:
    """A volume grows only: BadRequest for a size not above the current one."""
    if new_gb <= current_gb:
        raise BadRequest(f"new size {new_gb} GiB must be greater than the current size {current_gb} GiB")


def check_deletable(volume_id: str, status: str, attachments: int, snapshots: int) -> None:
    """Cinder's delete refusals: attached or reserved, with snapshots, or in an operation."""
    if attachments or status in ATTACHED_STATES:
        raise InvalidState(f"volume {volume_id} is {status} with {attachments} attachment(s): detach it first",
                           status=status)
    if snapshots:
        raise Conflict(f"volume {volume_id} has {snapshots} snapshot(s): delete them first")
    check_operation("delete", status, volume_id=volume_id)


def status_from_attachments(statuses: Iterable[str]) -> str:
    """The volume's status that its attachments' statuses give (none left = available).

    An attachment in progress shows (attaching / detaching) even while another one is attached,
    as Cinder does for multi-attach volumes.
    """
    states = set(statuses)
    if not states:
        return AVAILABLE
    if ATT_DETACHING in states:
        return DETACHING
    if ATT_ATTACHING in states:
        return ATTACHING
    if ATT_ATTACHED in states:
        return IN_USE
    return RESERVED


def check_reservable(volume_id: str, status: str, multiattach: bool, instance_attached: bool) -> None:
    """May a new attachment be reserved on this volume? Available, or attached and multi-attach."""
    if instance_attached:
        raise Conflict(f"volume {volume_id} is already attached to this server")
    if status == AVAILABLE:
        return
    if status in ATTACHED_STATES:
        if multiattach:
            return
        raise InvalidState(f"volume {volume_id} is {status} and its type does not allow multi-attach",
                           status=status)
    raise InvalidState(f"volume {volume_id} is {status}: only an available volume can be attached", status=status)
