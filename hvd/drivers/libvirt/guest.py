"""Blocking helpers on one libvirt domain; they run in LibvirtHost's worker threads only.

Each function takes the connection first (``LibvirtHost.call`` passes it) and does a short
sequence of libvirt calls, so one operation costs one hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

import libvirt

from hvd.compute.lifecycle import PowerState
from hvd.drivers.base import DOMAIN_PREFIX
from hvd.drivers.libvirt.volume_xml import with_network_volumes
from hvd.drivers.volumes import VolumeDisk

# libvirt domain state → power state. Unlike Nova, VIR_DOMAIN_SHUTDOWN ("being shut down": the
# QEMU process still runs) reads RUNNING, so a wait for SHUTDOWN means the domain really stopped.
_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def power_of(dom: Any) -> PowerState:
    """Power state of a domain; shut off with a managed-save image reads SUSPENDED."""
    state, _reason = dom.state()
    if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
        return PowerState.SUSPENDED
    return _STATE.get(state, PowerState.NOSTATE)


def event_power(event: int, detail: int) -> PowerState | None:
    """Power state after a lifecycle event; None for events that do not change it."""
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
        return PowerState.RUNNING
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return PowerState.PAUSED
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return PowerState.SUSPENDED
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            return PowerState.CRASHED
        return PowerState.SHUTDOWN
    if event == libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED:
        return PowerState.SUSPENDED
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return PowerState.CRASHED
    if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
        return PowerState.NOSTATE
    return None  # DEFINED, SHUTDOWN (a STOPPED follows), migration-only events


def lookup(conn: Any, uuid: str) -> Any:
    return conn.lookupByUUIDString(uuid)


def lookup_or_none(conn: Any, uuid: str) -> Any:
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def get_power(conn: Any, uuid: str) -> PowerState:
    return power_of(lookup(conn, uuid))


def owns(dom: Any, instances_path: str) -> bool:
    """Is ``dom`` an hvd domain of this host: named ``instance-*`` with a disk under
    ``instances_path``? Several daemons or test suites sharing a libvirtd never claim each other's."""
    if not dom.name().startswith(DOMAIN_PREFIX):
        return False
    prefix = instances_path.rstrip("/") + "/"
    root = ET.fromstring(dom.XMLDesc(0))
    # a server booted from a volume may have no local disk: its console log is still local
    sources = [*root.iterfind("devices/disk/source"), *root.iterfind("devices/serial/source"),
               *root.iterfind("devices/serial/log")]
    return any((src.get("file") or src.get("path") or "").startswith(prefix) for src in sources)


def list_power(conn: Any, instances_path: str) -> dict[str, PowerState]:
    out: dict[str, PowerState] = {}
    for dom in conn.listAllDomains(0):
        try:
            if owns(dom, instances_path):
                out[dom.UUIDString()] = power_of(dom)
        except libvirt.libvirtError as exc:
            # A domain undefined between the listing and the query is simply not there.
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return out


def define(conn: Any, xml: str) -> Any:
    """Define (or redefine) a persistent domain, validating the XML against libvirt's schema."""
    return conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)


def force_off(dom: Any) -> None:
    """Pull the plug if running or paused; no-op when off."""
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
                raise


def discard_saved_state(dom: Any) -> None:
    if dom.hasManagedSaveImage(0):
        dom.managedSaveRemove(0)


def destroy_and_undefine(conn: Any, uuid: str) -> bool:
    """Force off and undefine; False when there was no such domain."""
    dom = lookup_or_none(conn, uuid)
    if dom is None:
        return False
    try:
        force_off(dom)
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    return True


def redefine_and_start(conn: Any, uuid: str, xml: str | None) -> None:
    """Force off, drop saved state, redefine with ``xml`` when given, boot."""
    dom = lookup(conn, uuid)
    force_off(dom)
    discard_saved_state(dom)
    if xml is not None:
        dom = define(conn, xml)
    dom.create()


def acpi_shutdown(conn: Any, uuid: str) -> None:
    dom = lookup(conn, uuid)
    with contextlib.suppress(libvirt.libvirtError):  # the guest may have gone off meanwhile
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)


def disk_sources(conn: Any, uuid: str) -> list[str]:
    """Files of the domain's disks in device order (from its live or inactive XML)."""
    root = ET.fromstring(lookup(conn, uuid).XMLDesc(0))
    return [src.get("file", "") for src in root.iterfind("devices/disk/source")]


def macs(conn: Any, uuid: str, inactive: bool = False) -> list[str]:
    """MACs of the domain's interfaces: live definition, or the persistent one (``inactive``)."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    root = ET.fromstring(lookup(conn, uuid).XMLDesc(flags))
    return [m.get("address", "") for m in root.iterfind("devices/interface/mac")]


def change_interface(conn: Any, uuid: str, mac: str, xml: str, attach: bool) -> bool:
    """Attach/detach an interface where it is missing/present (live and persistent definitions).

    Returns True when a live change was requested (a live detach completes only once the guest
    releases the device).
    """
    dom = lookup(conn, uuid)
    live = bool(dom.isActive()) and ((mac in macs(conn, uuid)) != attach)
    config = (mac in macs(conn, uuid, inactive=True)) != attach
    flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0) | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0)
    if flags:
        (dom.attachDeviceFlags if attach else dom.detachDeviceFlags)(xml, flags)
    return live


def host_facts(conn: Any) -> dict[str, Any]:
    model, memory_mib, cpus, *_rest = conn.getInfo()
    return {
        "model": model,
        "memory_mib": memory_mib,
        "cpus": cpus,
        "version": conn.getVersion(),
        "hostname": conn.getHostname(),
        "capabilities": conn.getCapabilities(),
    }


def migration_flags(block: bool, auto_converge: bool, tls: bool = False, network_volumes: bool = False) -> int:
    """Peer-to-peer live migration that leaves the domain defined at the destination only; with
    ``block`` the disks' top layers are copied (the destination has the same base image); with
    ``tls`` the memory and disk streams are TLS (qemu.conf's migrate_tls_x509_cert_dir); with
    ``network_volumes`` local volume disks are neither copied nor shared (the destination reaches
    them over NBD), which libvirt's safety check cannot know: it is told so."""
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if network_volumes:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if block:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    return int(flags)


def migration_params(dest_uri: str, disks: tuple[str, ...] = (), tls: bool = False,
                     dest_xml: str | None = None) -> dict[str, Any]:
    """migrateToURI3's parameters (pure): ``disks`` (target devs) limits the storage copy to those
    disks; with ``tls`` the destination's certificate is checked against the address its libvirtd
    is reached at (in its host certificate), whatever name its qemu.conf migration_host gives;
    ``dest_xml`` is the definition the destination runs (volumes it reaches differently)."""
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: list(disks)} if disks else {}
    if tls and (address := urlsplit(dest_uri).hostname):
        params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] = address
    if dest_xml is not None:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dest_xml
    return params


def migrate(conn: Any, uuid: str, dest_uri: str, flags: int, disks: tuple[str, ...] = (),
            network_volumes: tuple[VolumeDisk, ...] = (), cache: str = "none") -> None:
    """Migrate with ``flags``; ``disks`` (target devs) limits the storage copy to those disks;
    ``network_volumes`` are volumes this host opens directly that the destination reaches over NBD
    (its definition gets their network disks; they are not copied)."""
    dom = lookup(conn, uuid)
    dest_xml = None
    if network_volumes:
        source = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        dest_xml = with_network_volumes(source, network_volumes, cache)
    params = migration_params(dest_uri, disks, bool(flags & libvirt.VIR_MIGRATE_TLS), dest_xml)
    dom.migrateToURI3(dest_uri, params, flags)


def migration_job(conn: Any, uuid: str) -> dict[str, Any] | None:
    """The running migration job's statistics, or None when no job runs."""
    dom = lookup_or_none(conn, uuid)
    if dom is None:
        return None
    stats: dict[str, Any] = dom.jobStats()
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    return stats


def set_max_downtime(conn: Any, uuid: str, ms: int) -> None:
    lookup(conn, uuid).migrateSetMaxDowntime(ms, 0)


def abort_job(conn: Any, uuid: str) -> None:
    dom = lookup_or_none(conn, uuid)
    if dom is not None:
        with contextlib.suppress(libvirt.libvirtError):  # no job: nothing to abort
            dom.abortJob()
