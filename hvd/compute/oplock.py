"""One operation at a time per instance ("instance is busy running X")."""

from __future__ import annotations

from hvd.errors import InstanceBusy


class OperationLocks:
    """Non-blocking per-instance locks: a second operation is refused, not queued."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    def acquire(self, instance_id: str, op: str) -> None:
        holder = self._held.get(instance_id)
        if holder is not None:
            raise InstanceBusy(f"Instance {instance_id} is busy running '{holder}'", operation=holder)
        self._held[instance_id] = op

    def release(self, instance_id: str) -> None:
        self._held.pop(instance_id, None)

    def holder(self, instance_id: str) -> str | None:
        return self._held.get(instance_id)
