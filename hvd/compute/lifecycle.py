"""The instance state machine: pure data and functions, no I/O.

Three fields describe an instance, as in Nova:

- ``vm_state``: the stable state the user asked for (active, stopped, ...);
- ``task_state``: the operation in progress, or None; the manager sets it by compare-and-swap
  through the catalog, so two operations on one instance cannot interleave;
- ``power_state``: what the hypervisor reports; only reconcile writes it.

``OPERATIONS`` is the table of seed-requirements.md section C: for each operation the vm_states
it may start from, its task_state sequence and its result. ``check_allowed`` enforces it,
``status_of`` gives the API's summary status, and ``rollback_of``/``finish_of`` tell crash repair
what to do with an instance found holding a task_state after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum

from hvd.errors import InvalidState


class VmState(StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    RESCUED = "rescued"
    RESIZED = "resized"
    SHELVED = "shelved"
    SHELVED_OFFLOADED = "shelved_offloaded"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(StrEnum):
    SCHEDULING = "scheduling"
    NETWORKING = "networking"
    BLOCK_DEVICE_MAPPING = "block_device_mapping"
    SPAWNING = "spawning"
    POWERING_OFF = "powering_off"
    POWERING_ON = "powering_on"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    PAUSING = "pausing"
    UNPAUSING = "unpausing"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    RESCUING = "rescuing"
    UNRESCUING = "unrescuing"
    IMAGE_SNAPSHOT = "image_snapshot"
    IMAGE_PENDING_UPLOAD = "image_pending_upload"
    IMAGE_UPLOADING = "image_uploading"
    REBUILDING = "rebuilding"
    REBUILD_SPAWNING = "rebuild_spawning"
    SHELVING = "shelving"
    SHELVING_IMAGE_UPLOADING = "shelving_image_uploading"
    SHELVING_OFFLOADING = "shelving_offloading"
    UNSHELVING = "unshelving"
    RESIZE_PREP = "resize_prep"
    RESIZE_MIGRATING = "resize_migrating"
    RESIZE_MIGRATED = "resize_migrated"
    RESIZE_FINISH = "resize_finish"
    RESIZE_REVERTING = "resize_reverting"
    RESIZE_CONFIRMING = "resize_confirming"
    MIGRATING = "migrating"
    DELETING = "deleting"


class PowerState(IntEnum):
    """Observed hypervisor state; values are Nova's (and libvirt-compatible where they overlap)."""

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7


class Op(StrEnum):
    """User-visible operations; values match the API action names."""

    LAUNCH = "launch"
    STOP = "stop"
    START = "start"
    REBOOT = "reboot"
    REBOOT_HARD = "reboot-hard"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESCUE = "rescue"
    UNRESCUE = "unrescue"
    SNAPSHOT = "snapshot"
    REBUILD = "rebuild"
    EVACUATE = "evacuate"
    SHELVE = "shelve"
    SHELVE_OFFLOAD = "shelve-offload"
    UNSHELVE = "unshelve"
    MIGRATE = "migrate"
    RESIZE = "resize"
    CONFIRM_RESIZE = "confirm-resize"
    REVERT_RESIZE = "revert-resize"
    LIVE_MIGRATE = "live-migrate"
    DELETE = "delete"


class Result(Enum):
    """Results that depend on the instance rather than on the operation."""

    UNCHANGED = "unchanged"  # snapshot, live-migrate: vm_state stays what it was
    PREVIOUS = "previous"  # confirm/revert resize: the vm_state before the resize (active/stopped)


@dataclass(frozen=True)
class OpSpec:
    """One row of the lifecycle table.

    ``busy_ok`` lists task_states during which the operation may still start (normally none:
    an instance with a task_state is busy).
    """

    op: Op
    allowed_from: frozenset[VmState]
    tasks: tuple[TaskState, ...]
    result: VmState | Result
    busy_ok: frozenset[TaskState] = frozenset()


V = VmState
T = TaskState
_ANY_LIVE = frozenset(VmState) - {VmState.DELETED}
_SNAPSHOTTABLE = frozenset({V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED})


def _spec(
    op: Op,
    allowed: set[VmState] | frozenset[VmState],
    tasks: tuple[TaskState, ...],
    result: VmState | Result,
    busy_ok: frozenset[TaskState] = frozenset(),
) -> OpSpec:
    return OpSpec(op, frozenset(allowed), tasks, result, busy_ok)


OPERATIONS: dict[Op, OpSpec] = {
    s.op: s
    for s in (
        # The catalog creates the record as building/None; launch then walks the build tasks.
        _spec(
            Op.LAUNCH,
            {V.BUILDING},
            (T.SCHEDULING, T.NETWORKING, T.BLOCK_DEVICE_MAPPING, T.SPAWNING),
            V.ACTIVE,
        ),
        _spec(Op.STOP, {V.ACTIVE}, (T.POWERING_OFF,), V.STOPPED),
        _spec(Op.START, {V.STOPPED}, (T.POWERING_ON,), V.ACTIVE),
        _spec(Op.REBOOT, {V.ACTIVE}, (T.REBOOTING,), V.ACTIVE),
        # As in Nova, a hard reboot may escalate a soft reboot that hangs.
        _spec(
            Op.REBOOT_HARD,
            {V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED, V.ERROR},
            (T.REBOOTING_HARD,),
            V.ACTIVE,
            frozenset({T.REBOOTING}),
        ),
        _spec(Op.PAUSE, {V.ACTIVE}, (T.PAUSING,), V.PAUSED),
        _spec(Op.UNPAUSE, {V.PAUSED}, (T.UNPAUSING,), V.ACTIVE),
        _spec(Op.SUSPEND, {V.ACTIVE}, (T.SUSPENDING,), V.SUSPENDED),
        _spec(Op.RESUME, {V.SUSPENDED}, (T.RESUMING,), V.ACTIVE),
        _spec(Op.RESCUE, {V.ACTIVE, V.STOPPED, V.ERROR}, (T.RESCUING,), V.RESCUED),
        _spec(Op.UNRESCUE, {V.RESCUED}, (T.UNRESCUING,), V.ACTIVE),
        _spec(
            Op.SNAPSHOT,
            _SNAPSHOTTABLE,
            (T.IMAGE_SNAPSHOT, T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING),
            Result.UNCHANGED,
        ),
        _spec(Op.REBUILD, {V.ACTIVE, V.STOPPED, V.ERROR}, (T.REBUILDING, T.REBUILD_SPAWNING), V.ACTIVE),
        # "host down" is the manager's check; the lifecycle only sees the vm_state.
        _spec(Op.EVACUATE, {V.ACTIVE, V.STOPPED, V.ERROR}, (T.REBUILDING, T.REBUILD_SPAWNING), V.ACTIVE),
        _spec(
            Op.SHELVE,
            _SNAPSHOTTABLE,
            (T.SHELVING, T.SHELVING_IMAGE_UPLOADING, T.SHELVING_OFFLOADING),
            V.SHELVED_OFFLOADED,
        ),
        # A shelved (not yet offloaded) instance still holds its host; this frees it.
        _spec(Op.SHELVE_OFFLOAD, {V.SHELVED}, (T.SHELVING_OFFLOADING,), V.SHELVED_OFFLOADED),
        _spec(Op.UNSHELVE, {V.SHELVED, V.SHELVED_OFFLOADED}, (T.UNSHELVING,), V.ACTIVE),
        _spec(
            Op.MIGRATE,
            {V.ACTIVE, V.STOPPED},
            (T.RESIZE_PREP, T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH),
            V.RESIZED,
        ),
        _spec(
            Op.RESIZE,
            {V.ACTIVE, V.STOPPED},
            (T.RESIZE_PREP, T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH),
            V.RESIZED,
        ),
        # The seed has no task_state for confirm; hvd sets one so the CAS serialises it against revert.
        _spec(Op.CONFIRM_RESIZE, {V.RESIZED}, (T.RESIZE_CONFIRMING,), Result.PREVIOUS),
        _spec(Op.REVERT_RESIZE, {V.RESIZED}, (T.RESIZE_REVERTING,), Result.PREVIOUS),
        _spec(Op.LIVE_MIGRATE, {V.ACTIVE, V.PAUSED}, (T.MIGRATING,), Result.UNCHANGED),
        # Delete wins over anything in progress (the running operation notices and gives up).
        _spec(Op.DELETE, _ANY_LIVE, (T.DELETING,), V.DELETED, frozenset(TaskState)),
    )
}


def _who(instance_id: str) -> str:
    return f"instance {instance_id}" if instance_id else "instance"


def check_allowed(op: Op, vm_state: VmState, task_state: TaskState | None, instance_id: str = "") -> None:
    """Raise InvalidState unless ``op`` may start from (vm_state, task_state).

    An instance with a task_state is busy: only operations listing that task_state in ``busy_ok``
    (delete: all; hard reboot: a soft reboot) may start.
    """
    spec = OPERATIONS[Op(op)]
    who = _who(instance_id)
    if vm_state not in spec.allowed_from:
        raise InvalidState(
            f"Cannot '{spec.op.value}' {who} while it is in vm_state {VmState(vm_state).value}",
            op=spec.op.value,
            vm_state=str(vm_state),
            task_state=None if task_state is None else str(task_state),
        )
    if task_state is not None and task_state not in spec.busy_ok:
        raise InvalidState(
            f"Cannot '{spec.op.value}' {who} while it is in task_state {TaskState(task_state).value}",
            op=spec.op.value,
            vm_state=str(vm_state),
            task_state=str(task_state),
        )


def is_allowed(op: Op, vm_state: VmState, task_state: TaskState | None) -> bool:
    """``check_allowed`` as a predicate."""
    try:
        check_allowed(op, vm_state, task_state)
    except InvalidState:
        return False
    return True


def allowed_ops(vm_state: VmState, task_state: TaskState | None) -> list[Op]:
    """Operations that may start now, in table order (for UIs and `hvd server show`)."""
    return [op for op in OPERATIONS if is_allowed(op, vm_state, task_state)]


def next_task(op: Op, current: TaskState | None) -> TaskState | None:
    """The task_state after ``current`` in ``op``'s sequence; None when the sequence is done.

    ``current=None`` gives the first task. A task_state outside the sequence is a ValueError
    (a bug in the caller, not a user error).
    """
    tasks = OPERATIONS[Op(op)].tasks
    if current is None:
        return tasks[0]
    index = tasks.index(TaskState(current))
    return tasks[index + 1] if index + 1 < len(tasks) else None


def result_of(op: Op, vm_state: VmState, previous: VmState | None = None) -> VmState:
    """The vm_state after ``op`` succeeds from ``vm_state``.

    ``previous`` is the vm_state recorded before a resize/migrate (needed by confirm/revert;
    defaults to active as in Nova when unknown).
    """
    result = OPERATIONS[Op(op)].result
    if result is Result.UNCHANGED:
        return VmState(vm_state)
    if result is Result.PREVIOUS:
        return VmState.STOPPED if previous == VmState.STOPPED else VmState.ACTIVE
    assert isinstance(result, VmState)
    return result


# Nova's api/openstack/common.py state map: vm_state → {task_state → status}, "default" otherwise.
_RESIZING = {
    T.RESIZE_PREP: "RESIZE",
    T.RESIZE_MIGRATING: "RESIZE",
    T.RESIZE_MIGRATED: "RESIZE",
    T.RESIZE_FINISH: "RESIZE",
}
_REBUILDING = {T.REBUILDING: "REBUILD", T.REBUILD_SPAWNING: "REBUILD"}
_STATUS: dict[VmState, tuple[str, dict[TaskState, str]]] = {
    V.BUILDING: ("BUILD", {}),
    V.ACTIVE: (
        "ACTIVE",
        {
            T.REBOOTING: "REBOOT",
            T.REBOOTING_HARD: "HARD_REBOOT",
            T.MIGRATING: "MIGRATING",
            **_RESIZING,
            **_REBUILDING,
        },
    ),
    V.STOPPED: ("SHUTOFF", {**_RESIZING, **_REBUILDING}),
    V.RESIZED: ("VERIFY_RESIZE", {T.RESIZE_REVERTING: "REVERT_RESIZE"}),
    V.PAUSED: ("PAUSED", {T.MIGRATING: "MIGRATING"}),
    V.SUSPENDED: ("SUSPENDED", {}),
    V.RESCUED: ("RESCUE", {}),
    V.ERROR: ("ERROR", dict(_REBUILDING)),
    V.DELETED: ("DELETED", {}),
    V.SHELVED: ("SHELVED", {}),
    V.SHELVED_OFFLOADED: ("SHELVED_OFFLOADED", {}),
}

STATUSES: frozenset[str] = frozenset(
    {default for default, _ in _STATUS.values()} | {s for _, m in _STATUS.values() for s in m.values()}
)


def status_of(vm_state: VmState, task_state: TaskState | None) -> str:
    """Nova's summary status of a server (BUILD, ACTIVE, SHUTOFF, REBOOT, ...).

    As in Nova, a task_state shows only where Nova shows it: e.g. a hard reboot of a stopped
    instance reads SHUTOFF until it is ACTIVE; a revert of a resize reads REVERT_RESIZE.
    """
    default, by_task = _STATUS[VmState(vm_state)]
    if task_state is None:
        return default
    return by_task.get(TaskState(task_state), default)


# --- crash repair -------------------------------------------------------------------------------


class RepairKind(StrEnum):
    NOTHING = "nothing"  # no task_state: nothing was interrupted
    SET_ERROR = "set_error"  # a half-built disk/domain cannot be trusted: clean the host, mark error
    FROM_POWER = "from_power"  # a power operation: the hypervisor's power state says how far it got
    RETRY = "retry"  # re-run the operation (it is idempotent), e.g. a reboot as a hard reboot
    ABORT = "abort"  # drop the partial result (snapshot image → killed), keep the vm_state
    FINISH = "finish"  # the point of no return was passed: complete the operation
    REVERT_RESIZE = "revert_resize"  # resize/migrate in flight: restore the source, drop the destination


@dataclass(frozen=True)
class Repair:
    """What reconcile does with an instance found holding ``task_state`` after a restart.

    ``vm_state`` is the state to record when it is known without asking the hypervisor; None means
    "use ``finish_of`` with the observed power state". The task_state is always cleared afterwards.
    """

    kind: RepairKind
    vm_state: VmState | None
    reason: str


_POWER_TASKS = {T.POWERING_OFF, T.POWERING_ON, T.PAUSING, T.UNPAUSING, T.SUSPENDING, T.RESUMING, T.MIGRATING}
_BUILD_TASKS = {T.SCHEDULING, T.NETWORKING, T.BLOCK_DEVICE_MAPPING, T.SPAWNING}
_SNAPSHOT_TASKS = {T.IMAGE_SNAPSHOT, T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING}


def rollback_of(task_state: TaskState | None, vm_state: VmState) -> Repair:
    """The crash-repair decision for an instance found with ``task_state`` (table below).

    ============================================  ==============  ====================================
    task_state                                    repair          vm_state recorded
    ============================================  ==============  ====================================
    None                                          nothing         unchanged
    scheduling, networking, block_device_mapping,  set_error       error (host files/domain removed;
    spawning                                                      the user deletes or rebuilds)
    rebuilding, rebuild_spawning, rescuing        set_error       error (hard reboot/rebuild recover)
    powering_off/on, pausing, unpausing,          from_power      finish_of(power state)
    suspending, resuming, migrating
    rebooting, rebooting_hard                     retry           active (retried as a hard reboot)
    unrescuing                                    retry           active
    image_snapshot, image_pending_upload,         abort           unchanged (image killed; unpause
    image_uploading                                               if the snapshot left it paused)
    shelving, shelving_image_uploading            abort           finish_of(power state)
    shelving_offloading                           finish          shelved_offloaded (image uploaded)
    unshelving                                    abort           unchanged (shelved/_offloaded)
    resize_prep                                   abort           unchanged (nothing moved yet)
    resize_migrating, resize_migrated,            revert_resize   unchanged (active/stopped)
    resize_finish
    resize_reverting                              finish          unchanged → previous state
    resize_confirming                             finish          unchanged → previous state
    deleting                                      finish          deleted
    ============================================  ==============  ====================================
    """
    vm_state = VmState(vm_state)
    if task_state is None:
        return Repair(RepairKind.NOTHING, vm_state, "no operation was in progress")
    t = TaskState(task_state)
    if t is T.DELETING:
        return Repair(RepairKind.FINISH, V.DELETED, "the user asked for deletion: finish it")
    if t in _BUILD_TASKS:
        return Repair(RepairKind.SET_ERROR, V.ERROR, "build interrupted; the disk may be incomplete")
    if t in (T.REBUILDING, T.REBUILD_SPAWNING):
        return Repair(RepairKind.SET_ERROR, V.ERROR, "rebuild interrupted; the disk may be incomplete")
    if t is T.RESCUING:
        return Repair(RepairKind.SET_ERROR, V.ERROR, "rescue interrupted; hard reboot or rescue again")
    if t in _POWER_TASKS:
        return Repair(RepairKind.FROM_POWER, None, "power operation interrupted; trust the hypervisor")
    if t in (T.REBOOTING, T.REBOOTING_HARD):
        return Repair(RepairKind.RETRY, V.ACTIVE, "reboot interrupted; retry as a hard reboot")
    if t is T.UNRESCUING:
        return Repair(RepairKind.RETRY, V.ACTIVE, "unrescue interrupted; boot the original disk")
    if t in _SNAPSHOT_TASKS:
        return Repair(RepairKind.ABORT, vm_state, "snapshot interrupted; the image is marked killed")
    if t in (T.SHELVING, T.SHELVING_IMAGE_UPLOADING):
        return Repair(RepairKind.ABORT, None, "shelve interrupted before the image was complete")
    if t is T.SHELVING_OFFLOADING:
        return Repair(RepairKind.FINISH, V.SHELVED_OFFLOADED, "shelve image uploaded: finish the offload")
    if t is T.UNSHELVING:
        kept = vm_state if vm_state in (V.SHELVED, V.SHELVED_OFFLOADED) else V.SHELVED_OFFLOADED
        return Repair(RepairKind.ABORT, kept, "unshelve interrupted; the shelved image is kept")
    if t is T.RESIZE_PREP:
        return Repair(RepairKind.ABORT, vm_state, "resize not started on the hypervisor")
    if t in (T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH):
        return Repair(RepairKind.REVERT_RESIZE, vm_state, "resize in flight; restore the source")
    if t in (T.RESIZE_REVERTING, T.RESIZE_CONFIRMING):
        return Repair(RepairKind.FINISH, None, "the user chose; finish confirm/revert")
    raise AssertionError(f"unhandled task_state {t}")  # pragma: no cover - the enum is exhaustive


def vm_state_for_power(power_state: PowerState) -> VmState:
    """The stable vm_state that matches an observed power state (Nova's power-state sync).

    A missing or crashed domain reads as stopped, as Nova's sync stops such instances.
    """
    return {
        PowerState.RUNNING: V.ACTIVE,
        PowerState.PAUSED: V.PAUSED,
        PowerState.SUSPENDED: V.SUSPENDED,
        PowerState.SHUTDOWN: V.STOPPED,
        PowerState.CRASHED: V.STOPPED,
        PowerState.NOSTATE: V.STOPPED,
    }[PowerState(power_state)]


def finish_of(
    task_state: TaskState | None,
    vm_state: VmState,
    power_state: PowerState,
    previous: VmState | None = None,
) -> VmState:
    """The vm_state to record once the repair of ``rollback_of`` is done.

    ``power_state`` is observed after the repair's hypervisor actions (e.g. after an unpause of a
    snapshot-paused domain); ``previous`` is the pre-resize vm_state for confirm/revert.
    """
    repair = rollback_of(task_state, vm_state)
    if task_state in (T.RESIZE_REVERTING, T.RESIZE_CONFIRMING):
        return VmState.STOPPED if previous == VmState.STOPPED else VmState.ACTIVE
    if repair.vm_state is not None:
        return repair.vm_state
    # Power tasks and interrupted shelves: what the hypervisor shows is what the user has now.
    return vm_state_for_power(power_state)
