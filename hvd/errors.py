"""One exception tree for hvd.

Every error carries its HTTP status, a title and whether retrying may help. Errors cross between
daemons (and out of the replicated catalog's apply) by class name: `to_wire()` / `from_wire()`.
The API's error middleware is the only place that turns them into HTTP responses.
"""

from __future__ import annotations

from typing import Any, ClassVar

_REGISTRY: dict[str, type[HvdError]] = {}


class HvdError(Exception):
    """Base of every error hvd raises on purpose."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def to_wire(self) -> dict[str, Any]:
        """JSON-able form; `from_wire` raises the same class on the other side."""
        return {"name": type(self).__name__, "message": self.message, "details": self.details}

    @staticmethod
    def from_wire(data: dict[str, Any]) -> HvdError:
        cls = _REGISTRY.get(str(data.get("name")), HvdError)
        err = cls.__new__(cls)
        HvdError.__init__(err, str(data.get("message", "")), **dict(data.get("details") or {}))
        return err


_REGISTRY["HvdError"] = HvdError


class BadRequest(HvdError):
    status = 400
    title = "Bad Request"


class ConfigError(HvdError):
    status = 400
    title = "Invalid Configuration"


class Unauthorized(HvdError):
    status = 401
    title = "Unauthorized"


class Forbidden(HvdError):
    status = 403
    title = "Forbidden"


class QuotaExceeded(Forbidden):
    title = "Quota Exceeded"


class NotFound(HvdError):
    status = 404
    title = "Not Found"


class MethodNotAllowed(HvdError):
    status = 405
    title = "Method Not Allowed"


class Conflict(HvdError):
    status = 409
    title = "Conflict"


class InvalidState(Conflict):
    """An operation not allowed from the resource's current state."""


class InstanceLocked(Conflict):
    title = "Instance Locked"


class InstanceBusy(Conflict):
    """Another operation holds the instance's operation lock."""

    retryable = True


class CapacityExceeded(Conflict):
    """A resource claim would exceed a host's capacity × allocation ratio."""

    retryable = True


class UpgradeInProgress(Conflict):
    """A command some cluster member's older build could not apply (hvd.catalog.protocol): held
    back, not appended, until every member is upgraded."""

    title = "Upgrade In Progress"


class PayloadTooLarge(HvdError):
    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(HvdError):
    status = 415
    title = "Unsupported Media Type"


class NoValidHost(HvdError):
    status = 409
    title = "No Valid Host"


class KernelFeatureMissing(HvdError):
    """The host kernel lacks a feature (e.g. 802.1Q VLAN links)."""

    status = 501
    title = "Not Implemented On This Host"


class NotImplementedYet(HvdError):
    """A documented feature that this build cannot do yet (says what is missing)."""

    status = 501
    title = "Not Implemented"


class DriverError(HvdError):
    """The hypervisor or a host tool failed."""

    status = 500
    title = "Hypervisor Error"


class ServiceUnavailable(HvdError):
    status = 503
    title = "Service Unavailable"
    retryable = True


class NotLeader(ServiceUnavailable):
    """This node cannot commit; `details["leader_id"]` names the leader if known."""


class OutcomeUnknown(ServiceUnavailable):
    """A change may or may not have been committed (a connection broke, leadership moved)."""


class InsufficientStorage(HvdError):
    """This host's disk is full: the change was not made; it is accepted again once space returns."""

    status = 507
    title = "Insufficient Storage"
    retryable = True


class Timeout(HvdError):
    status = 504
    title = "Timeout"
    retryable = True
