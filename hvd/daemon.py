"""Composition root: the only module that names concrete classes.

Start-up is ordered (catalog → identity → host record → API listener → READY=1) and shutdown
runs in reverse, aiohttp cleanup_ctx style.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

import hvd
from hvd import systemd
from hvd.api.app import build_app
from hvd.api.services import ApiServices
from hvd.catalog.service import Catalog
from hvd.compute.hostinfo import host_register_command
from hvd.config import Config
from hvd.identity.policy import Policy
from hvd.identity.service import IdentityService, now_iso

log = logging.getLogger(__name__)


def _meminfo_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


async def register_host(config: Config, catalog: Catalog, api_url: str) -> None:
    """Record this host and its resources in the catalog (done at every start)."""
    disk = shutil.disk_usage(config.host.instances_path)
    cmd = host_register_command(
        config,
        api_url,
        now_iso(),
        vcpus=os.cpu_count() or 1,
        memory_mb=_meminfo_mb(),
        disk_gb=disk.total // 2**30,
        hypervisor_type="QEMU" if config.compute.driver == "libvirt" else "fake",
        hypervisor_version="",
        cpu_model=platform_cpu_model(),
    )
    await catalog.propose(cmd)


def platform_cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


@contextlib.asynccontextmanager
async def running_services(config: Config) -> AsyncIterator[ApiServices]:
    """Start every service in order; stop them in reverse on exit."""
    data_dir = Path(config.host.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    Path(config.host.instances_path).mkdir(parents=True, exist_ok=True)
    api_url = f"http://{config.api.listen}:{config.api.port}"
    catalog = Catalog.open_local(data_dir / "catalog.db", config.node_id)
    try:
        await catalog.coordinator.start()
        identity = IdentityService(catalog, config.identity.token_ttl_s)
        openrc = Path(config.identity.openrc_path or data_dir / "openrc")
        await identity.bootstrap(config.identity.admin_password, openrc, api_url)
        await register_host(config, catalog, api_url)
        yield ApiServices(
            config=config,
            catalog=catalog,
            identity=identity,
            policy=Policy(config.identity.policy),
            api_url=api_url,
        )
    finally:
        await catalog.coordinator.stop()
        catalog.close()


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_services(config) as services:
        app = build_app(services)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.api.listen, config.api.port, reuse_address=True)
        await site.start()
        log.info("hvd %s listening on %s (host %s)", hvd.__version__, services.api_url, config.host_name)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        watchdog = asyncio.create_task(systemd.watchdog_loop(interval)) if interval else None
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            systemd.notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            await runner.cleanup()


def run(config: Config) -> None:
    """Entry point of `hvd daemon`: uvloop + serve()."""
    import uvloop

    uvloop.run(serve(config))
