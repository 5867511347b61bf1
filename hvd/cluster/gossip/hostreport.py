"""This host's resource report: totals from the driver, claims and the enabled flag from the catalog."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import hvd
from hvd.catalog.cmd_hosts import claimed
from hvd.catalog.cmd_volumes import backend_reports
from hvd.catalog.protocol import PROTOCOL
from hvd.catalog.service import Catalog
from hvd.cluster.gossip.report import ResourceReport
from hvd.config import Config
from hvd.drivers.base import HostResources


def _host_usage(conn: sqlite3.Connection, name: str) -> tuple[dict[str, Any] | None, dict[str, int]]:
    row = conn.execute("SELECT enabled, disabled_reason, capabilities FROM hosts WHERE name=?", (name,)).fetchone()
    host = None if row is None else {"enabled": bool(row[0]), "disabled_reason": row[1], "capabilities": row[2]}
    return host, claimed(conn, name)


def build_report(config: Config, res: HostResources, host: dict[str, Any] | None, used: dict[str, int],
                 api_url: str, load: float) -> ResourceReport:
    """The report (pure): free = total - reserved - what the instances placed here claim."""
    c = config.compute
    reserved = {"vcpus": c.reserved_host_cpus, "memory_mb": c.reserved_host_memory_mb,
                "disk_gb": c.reserved_host_disk_mb // 1024}
    totals = {"vcpus": res.vcpus, "memory_mb": res.memory_mib, "disk_gb": res.disk_gb}
    free = {k: max(0, totals[k] - reserved[k] - int(used.get(k, 0))) for k in totals}
    caps: dict[str, str] = {}
    enabled, reason = True, ""
    if host is not None:
        enabled, reason = bool(host["enabled"]), str(host["disabled_reason"])
        try:
            caps = {str(k): str(v) for k, v in json.loads(host["capabilities"] or "{}").items()}
        except (ValueError, AttributeError):
            caps = {}
    return ResourceReport(
        vcpus_total=res.vcpus, vcpus_reserved=reserved["vcpus"], vcpus_free=free["vcpus"],
        memory_mb_total=res.memory_mib, memory_mb_reserved=reserved["memory_mb"], memory_mb_free=free["memory_mb"],
        disk_gb_total=res.disk_gb, disk_gb_reserved=reserved["disk_gb"], disk_gb_free=free["disk_gb"],
        instances=int(used.get("count", 0)), load=round(load, 2),
        hypervisor_type=res.hypervisor_type, hypervisor_version=str(res.hypervisor_version), arch=res.arch,
        cpu_model=res.cpu_model, availability_zone=config.host.availability_zone, enabled=enabled,
        drain=not enabled and "drain" in reason.lower(), capabilities=caps, hvd_version=hvd.__version__,
        protocol=advertised_protocol(config), node_id=config.node_id, vtep=config.network.local_ip, api_url=api_url,
    )


def initial_report(config: Config, api_url: str) -> ResourceReport:
    """What is known before the driver answers: enough for others to reach and name this host."""
    return ResourceReport(availability_zone=config.host.availability_zone, hvd_version=hvd.__version__,
                          protocol=advertised_protocol(config), node_id=config.node_id,
                          vtep=config.network.local_ip, api_url=api_url)


def advertised_protocol(config: Config) -> int:
    """The catalog protocol level this host advertises: its build's, or the older one a
    rolling-upgrade drill set in ``[cluster] advertise_protocol``."""
    return config.cluster.advertise_protocol or PROTOCOL


def _volume_capacity(conn: sqlite3.Connection, name: str) -> dict[str, int]:
    """Total and free GiB of the host's volume backends, from its last report to the catalog."""
    report = backend_reports(conn).get(name, {})
    backends = report.get("backends", [])
    return {"volume_gb_total": sum(int(b.get("total_gb", 0)) for b in backends),
            "volume_gb_free": sum(int(b.get("free_gb", 0)) for b in backends)}


async def current_report(config: Config, catalog: Catalog, res: HostResources, api_url: str) -> ResourceReport:
    """The report now (``res`` from ``driver.host_resources()``)."""
    host, used = await catalog.read(_host_usage, config.host_name)
    volumes = await catalog.read(_volume_capacity, config.host_name)
    return build_report(config, res, host, used, api_url, os.getloadavg()[0]).model_copy(update=volumes)
