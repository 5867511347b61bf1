"""This host's record for the catalog: resources (from the driver) + config (reserved, ratios, AZ)."""

from __future__ import annotations

import platform

from hvd.catalog.cmd_hosts import HostRegister
from hvd.config import Config


def host_register_command(
    config: Config,
    api_url: str,
    now: str,
    *,
    vcpus: int,
    memory_mb: int,
    disk_gb: int,
    hypervisor_type: str,
    hypervisor_version: str,
    cpu_model: str,
    arch: str = "",
) -> HostRegister:
    c = config.compute
    return HostRegister(
        name=config.host_name,
        node_id=config.node_id,
        availability_zone=config.host.availability_zone,
        vcpus=vcpus,
        memory_mb=memory_mb,
        disk_gb=disk_gb,
        reserved_vcpus=c.reserved_host_cpus,
        reserved_memory_mb=c.reserved_host_memory_mb,
        reserved_disk_gb=c.reserved_host_disk_mb // 1024,
        cpu_ratio=c.cpu_allocation_ratio,
        ram_ratio=c.ram_allocation_ratio,
        disk_ratio=c.disk_allocation_ratio,
        hypervisor_type=hypervisor_type,
        hypervisor_version=hypervisor_version,
        arch=arch or platform.machine(),
        cpu_model=cpu_model,
        capabilities={"virt_type": config.libvirt.virt_type, "driver": c.driver},
        api_url=api_url,
        updated_at=now,
    )
