"""The lifecycle table: every (operation, vm_state, task_state) triple, status map, crash repair."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvd.compute.lifecycle import (
    OPERATIONS,
    STATUSES,
    Op,
    PowerState,
    RepairKind,
    Result,
    TaskState,
    VmState,
    allowed_ops,
    check_allowed,
    finish_of,
    is_allowed,
    next_task,
    result_of,
    rollback_of,
    status_of,
    vm_state_for_power,
)
from hvd.errors import InvalidState

V, T = VmState, TaskState
TASKS_OR_NONE: list[TaskState | None] = [None, *TaskState]

# The seed's table, written out independently of the module so a typo in either shows up.
SEED_ALLOWED: dict[Op, set[VmState]] = {
    Op.LAUNCH: {V.BUILDING},
    Op.STOP: {V.ACTIVE},
    Op.START: {V.STOPPED},
    Op.REBOOT: {V.ACTIVE},
    Op.REBOOT_HARD: {V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED, V.ERROR},
    Op.PAUSE: {V.ACTIVE},
    Op.UNPAUSE: {V.PAUSED},
    Op.SUSPEND: {V.ACTIVE},
    Op.RESUME: {V.SUSPENDED},
    Op.RESCUE: {V.ACTIVE, V.STOPPED, V.ERROR},
    Op.UNRESCUE: {V.RESCUED},
    Op.SNAPSHOT: {V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED},
    Op.REBUILD: {V.ACTIVE, V.STOPPED, V.ERROR},
    Op.EVACUATE: {V.ACTIVE, V.STOPPED, V.ERROR},
    Op.SHELVE: {V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED},
    Op.SHELVE_OFFLOAD: {V.SHELVED},
    Op.UNSHELVE: {V.SHELVED, V.SHELVED_OFFLOADED},
    Op.MIGRATE: {V.ACTIVE, V.STOPPED},
    Op.RESIZE: {V.ACTIVE, V.STOPPED},
    Op.CONFIRM_RESIZE: {V.RESIZED},
    Op.REVERT_RESIZE: {V.RESIZED},
    Op.LIVE_MIGRATE: {V.ACTIVE, V.PAUSED},
    Op.DELETE: set(VmState) - {V.DELETED},
}
SEED_RESULT: dict[Op, VmState] = {
    Op.LAUNCH: V.ACTIVE,
    Op.STOP: V.STOPPED,
    Op.START: V.ACTIVE,
    Op.REBOOT: V.ACTIVE,
    Op.REBOOT_HARD: V.ACTIVE,
    Op.PAUSE: V.PAUSED,
    Op.UNPAUSE: V.ACTIVE,
    Op.SUSPEND: V.SUSPENDED,
    Op.RESUME: V.ACTIVE,
    Op.RESCUE: V.RESCUED,
    Op.UNRESCUE: V.ACTIVE,
    Op.REBUILD: V.ACTIVE,
    Op.EVACUATE: V.ACTIVE,
    Op.SHELVE: V.SHELVED_OFFLOADED,
    Op.SHELVE_OFFLOAD: V.SHELVED_OFFLOADED,
    Op.UNSHELVE: V.ACTIVE,
    Op.MIGRATE: V.RESIZED,
    Op.RESIZE: V.RESIZED,
    Op.DELETE: V.DELETED,
}


def test_every_operation_has_a_row() -> None:
    assert set(OPERATIONS) == set(Op) == set(SEED_ALLOWED)


@pytest.mark.parametrize("op", list(Op))
def test_check_allowed_matches_seed_table(op: Op) -> None:
    busy_ok: set[TaskState] = set()
    if op is Op.DELETE:
        busy_ok = set(TaskState)
    elif op is Op.REBOOT_HARD:
        busy_ok = {T.REBOOTING}
    for vm_state, task_state in itertools.product(VmState, TASKS_OR_NONE):
        expected = vm_state in SEED_ALLOWED[op] and (task_state is None or task_state in busy_ok)
        if expected:
            check_allowed(op, vm_state, task_state, "abc")
        else:
            with pytest.raises(InvalidState):
                check_allowed(op, vm_state, task_state, "abc")
        assert is_allowed(op, vm_state, task_state) is expected, (vm_state, task_state)


def test_message_names_operation_instance_and_state() -> None:
    with pytest.raises(InvalidState) as err:
        check_allowed(Op.PAUSE, V.STOPPED, None, "1234")
    assert err.value.message == "Cannot 'pause' instance 1234 while it is in vm_state stopped"
    assert err.value.status == 409
    with pytest.raises(InvalidState) as err:
        check_allowed(Op.STOP, V.ACTIVE, T.REBOOTING, "1234")
    assert err.value.message == "Cannot 'stop' instance 1234 while it is in task_state rebooting"


def test_delete_allowed_during_any_task_but_not_twice_deleted() -> None:
    for task in TASKS_OR_NONE:
        check_allowed(Op.DELETE, V.ACTIVE, task)
    with pytest.raises(InvalidState):
        check_allowed(Op.DELETE, V.DELETED, None)


def test_hard_reboot_escalates_a_soft_reboot() -> None:
    check_allowed(Op.REBOOT_HARD, V.ACTIVE, T.REBOOTING)
    with pytest.raises(InvalidState):
        check_allowed(Op.REBOOT, V.ACTIVE, T.REBOOTING)


@pytest.mark.parametrize(
    ("op", "sequence"),
    [
        (Op.LAUNCH, [T.SCHEDULING, T.NETWORKING, T.BLOCK_DEVICE_MAPPING, T.SPAWNING]),
        (Op.SNAPSHOT, [T.IMAGE_SNAPSHOT, T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING]),
        (Op.REBUILD, [T.REBUILDING, T.REBUILD_SPAWNING]),
        (Op.SHELVE, [T.SHELVING, T.SHELVING_IMAGE_UPLOADING, T.SHELVING_OFFLOADING]),
        (Op.RESIZE, [T.RESIZE_PREP, T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH]),
        (Op.MIGRATE, [T.RESIZE_PREP, T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH]),
        (Op.REVERT_RESIZE, [T.RESIZE_REVERTING]),
        (Op.STOP, [T.POWERING_OFF]),
        (Op.DELETE, [T.DELETING]),
    ],
)
def test_task_sequences(op: Op, sequence: list[TaskState]) -> None:
    walked: list[TaskState] = []
    task = next_task(op, None)
    while task is not None:
        walked.append(task)
        task = next_task(op, task)
    assert walked == sequence


def test_next_task_rejects_a_foreign_task() -> None:
    with pytest.raises(ValueError):
        next_task(Op.STOP, T.PAUSING)


@pytest.mark.parametrize("op", list(Op))
def test_results(op: Op) -> None:
    for vm_state in OPERATIONS[op].allowed_from:
        result = result_of(op, vm_state, previous=V.STOPPED)
        if op in SEED_RESULT:
            assert result == SEED_RESULT[op]
        elif OPERATIONS[op].result is Result.UNCHANGED:
            assert result == vm_state
        else:
            assert result == V.STOPPED


def test_confirm_and_revert_return_to_the_previous_state() -> None:
    assert result_of(Op.REVERT_RESIZE, V.RESIZED, previous=V.ACTIVE) == V.ACTIVE
    assert result_of(Op.CONFIRM_RESIZE, V.RESIZED, previous=V.STOPPED) == V.STOPPED
    assert result_of(Op.CONFIRM_RESIZE, V.RESIZED) == V.ACTIVE


def test_allowed_ops_of_an_active_instance() -> None:
    ops = set(allowed_ops(V.ACTIVE, None))
    assert {Op.STOP, Op.REBOOT, Op.PAUSE, Op.SNAPSHOT, Op.DELETE, Op.LIVE_MIGRATE} <= ops
    assert Op.START not in ops and Op.UNPAUSE not in ops
    assert allowed_ops(V.ACTIVE, T.POWERING_OFF) == [Op.DELETE]


@pytest.mark.parametrize(
    ("vm_state", "task_state", "status"),
    [
        (V.BUILDING, T.SPAWNING, "BUILD"),
        (V.BUILDING, None, "BUILD"),
        (V.ACTIVE, None, "ACTIVE"),
        (V.ACTIVE, T.POWERING_OFF, "ACTIVE"),
        (V.ACTIVE, T.REBOOTING, "REBOOT"),
        (V.ACTIVE, T.REBOOTING_HARD, "HARD_REBOOT"),
        (V.ACTIVE, T.REBUILDING, "REBUILD"),
        (V.ACTIVE, T.REBUILD_SPAWNING, "REBUILD"),
        (V.ACTIVE, T.RESIZE_PREP, "RESIZE"),
        (V.ACTIVE, T.RESIZE_FINISH, "RESIZE"),
        (V.ACTIVE, T.MIGRATING, "MIGRATING"),
        (V.STOPPED, None, "SHUTOFF"),
        (V.STOPPED, T.RESIZE_MIGRATING, "RESIZE"),
        (V.STOPPED, T.REBUILDING, "REBUILD"),
        (V.STOPPED, T.REBOOTING_HARD, "SHUTOFF"),
        (V.PAUSED, None, "PAUSED"),
        (V.PAUSED, T.MIGRATING, "MIGRATING"),
        (V.SUSPENDED, None, "SUSPENDED"),
        (V.RESCUED, None, "RESCUE"),
        (V.RESIZED, None, "VERIFY_RESIZE"),
        (V.RESIZED, T.RESIZE_REVERTING, "REVERT_RESIZE"),
        (V.RESIZED, T.RESIZE_CONFIRMING, "VERIFY_RESIZE"),
        (V.SHELVED, None, "SHELVED"),
        (V.SHELVED_OFFLOADED, None, "SHELVED_OFFLOADED"),
        (V.SHELVED_OFFLOADED, T.UNSHELVING, "SHELVED_OFFLOADED"),
        (V.ERROR, None, "ERROR"),
        (V.ERROR, T.REBUILDING, "REBUILD"),
        (V.ERROR, T.DELETING, "ERROR"),
        (V.DELETED, None, "DELETED"),
    ],
)
def test_status_of(vm_state: VmState, task_state: TaskState | None, status: str) -> None:
    assert status_of(vm_state, task_state) == status


def test_statuses_are_novas() -> None:
    nova = {
        "BUILD", "ACTIVE", "SHUTOFF", "PAUSED", "SUSPENDED", "RESCUE", "VERIFY_RESIZE", "REVERT_RESIZE",
        "SHELVED", "SHELVED_OFFLOADED", "REBOOT", "HARD_REBOOT", "REBUILD", "RESIZE", "MIGRATING",
        "ERROR", "DELETED",
    }  # fmt: skip
    assert nova == STATUSES


@given(st.sampled_from(list(VmState)), st.sampled_from(TASKS_OR_NONE))
def test_status_is_total(vm_state: VmState, task_state: TaskState | None) -> None:
    assert status_of(vm_state, task_state) in STATUSES


@given(st.sampled_from(TASKS_OR_NONE), st.sampled_from(list(VmState)), st.sampled_from(list(PowerState)))
def test_repair_is_total_and_clears_to_a_stable_state(
    task_state: TaskState | None, vm_state: VmState, power: PowerState
) -> None:
    repair = rollback_of(task_state, vm_state)
    assert repair.reason
    final = finish_of(task_state, vm_state, power, previous=V.ACTIVE)
    assert isinstance(final, VmState)
    if repair.vm_state is not None and task_state not in (T.RESIZE_REVERTING, T.RESIZE_CONFIRMING):
        assert final == repair.vm_state


@pytest.mark.parametrize(
    ("task_state", "kind", "vm_state"),
    [
        (None, RepairKind.NOTHING, V.ACTIVE),
        (T.SPAWNING, RepairKind.SET_ERROR, V.ERROR),
        (T.SCHEDULING, RepairKind.SET_ERROR, V.ERROR),
        (T.REBUILD_SPAWNING, RepairKind.SET_ERROR, V.ERROR),
        (T.POWERING_OFF, RepairKind.FROM_POWER, None),
        (T.REBOOTING, RepairKind.RETRY, V.ACTIVE),
        (T.IMAGE_UPLOADING, RepairKind.ABORT, V.ACTIVE),
        (T.SHELVING_OFFLOADING, RepairKind.FINISH, V.SHELVED_OFFLOADED),
        (T.UNSHELVING, RepairKind.ABORT, V.SHELVED_OFFLOADED),
        (T.RESIZE_PREP, RepairKind.ABORT, V.ACTIVE),
        (T.RESIZE_MIGRATING, RepairKind.REVERT_RESIZE, V.ACTIVE),
        (T.RESIZE_FINISH, RepairKind.REVERT_RESIZE, V.ACTIVE),
        (T.RESIZE_REVERTING, RepairKind.FINISH, None),
        (T.DELETING, RepairKind.FINISH, V.DELETED),
    ],
)
def test_rollback_table(task_state: TaskState | None, kind: RepairKind, vm_state: VmState | None) -> None:
    repair = rollback_of(task_state, V.ACTIVE)
    assert (repair.kind, repair.vm_state) == (kind, vm_state)


def test_interrupted_power_operations_follow_the_hypervisor() -> None:
    assert finish_of(T.POWERING_OFF, V.ACTIVE, PowerState.SHUTDOWN) == V.STOPPED
    assert finish_of(T.POWERING_OFF, V.ACTIVE, PowerState.RUNNING) == V.ACTIVE
    assert finish_of(T.PAUSING, V.ACTIVE, PowerState.PAUSED) == V.PAUSED
    assert finish_of(T.SUSPENDING, V.ACTIVE, PowerState.SUSPENDED) == V.SUSPENDED
    assert finish_of(T.POWERING_ON, V.STOPPED, PowerState.NOSTATE) == V.STOPPED
    assert finish_of(T.SHELVING, V.ACTIVE, PowerState.SHUTDOWN) == V.STOPPED
    assert finish_of(T.RESIZE_REVERTING, V.RESIZED, PowerState.SHUTDOWN, previous=V.STOPPED) == V.STOPPED


def test_unshelve_of_a_shelved_instance_stays_shelved() -> None:
    assert rollback_of(T.UNSHELVING, V.SHELVED).vm_state == V.SHELVED


def test_power_state_values_are_novas() -> None:
    assert [int(p) for p in PowerState] == [0, 1, 3, 4, 6, 7]
    assert vm_state_for_power(PowerState.CRASHED) == V.STOPPED
