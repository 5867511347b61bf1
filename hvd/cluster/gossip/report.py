"""A member's metadata: its resource report, as gossip carries it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hvd.catalog.protocol import OLDEST

LOAD_STEP = 1.0  # a load change smaller than this is not worth a broadcast on its own


class ResourceReport(BaseModel):
    """What a host tells every other host about itself (totals from the hypervisor, free as the
    hypervisor sees it). Usage for placement comes from the catalog's claim ledger, not from here."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # a newer member may report more fields

    vcpus_total: int = 0
    vcpus_reserved: int = 0
    vcpus_free: int = 0
    memory_mb_total: int = 0
    memory_mb_reserved: int = 0
    memory_mb_free: int = 0
    disk_gb_total: int = 0
    disk_gb_reserved: int = 0
    disk_gb_free: int = 0
    volume_gb_total: int = 0  # the host's volume backends (hvd/storage/volumes), as last measured
    volume_gb_free: int = 0
    instances: int = 0
    load: float = 0.0
    hypervisor_type: str = ""
    hypervisor_version: str = ""
    arch: str = ""
    cpu_model: str = ""
    availability_zone: str = ""
    enabled: bool = True
    drain: bool = False
    capabilities: dict[str, str] = Field(default_factory=dict)
    hvd_version: str = ""
    # the catalog protocol level it applies (hvd.catalog.protocol); builds before levels send none
    protocol: int = Field(OLDEST, ge=OLDEST)
    node_id: str = Field("", description="Its Raft node id ('' from older builds: the host name is used).")
    vtep: str = ""
    api_url: str = Field("", description="Peer API base URL: where push-pull state syncs go.")

    def wire(self) -> dict[str, Any]:
        return self.model_dump()


def significant_change(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when ``new`` differs from ``old`` in a way others should hear about now (load jitter is not)."""
    if {k: v for k, v in old.items() if k != "load"} != {k: v for k, v in new.items() if k != "load"}:
        return True
    return abs(float(old.get("load", 0.0)) - float(new.get("load", 0.0))) >= LOAD_STEP


def parse_report(data: Any) -> ResourceReport:
    """A report received from a peer; fields of the wrong type fall back to an empty report."""
    try:
        return ResourceReport.model_validate(data)
    except ValueError:
        return ResourceReport()
