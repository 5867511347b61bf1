"""Host-side compute: the driver steps of every operation on an instance of THIS host.

The manager never decides whether an operation is allowed (compute.service does, before the
compare-and-swap of task_state) and never retries (placement owns retries). Each method runs
the driver steps of one operation, registering undos, and returns the fields of the final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from hvd.catalog.cmd_compute import PASSWORD_KEY, ImageCreate, ImageSetStatus, InstanceUpdate
from hvd.catalog.service import Catalog
from hvd.catalog.sql import fetch_all, fetch_one
from hvd.cluster.peers import PeerCaller
from hvd.compute import base_source, metadata_content
from hvd.compute.lifecycle import PowerState, TaskState
from hvd.compute.metadata_content import hostname_of
from hvd.compute.revert import Reverter
from hvd.config import Config
from hvd.drivers.base import DISK, DISK_CONFIG, ComputeDriver, InstanceSpec, Nic
from hvd.errors import BadRequest, NotFound
from hvd.events import EventBus
from hvd.faults import checkpoint
from hvd.identity.service import now_iso
from hvd.storage import qemu_img, transfer
from hvd.storage.image_cache import ImageCache
from hvd.storage.image_store import ImageStore

log = logging.getLogger(__name__)

RESIZE_SUFFIX = "_resize"
NEW_GUEST = {PASSWORD_KEY: ""}  # extra of a server whose guest starts afresh from its image: no password


def instances_using(conn: sqlite3.Connection, image_id: str) -> list[dict[str, Any]]:
    """Live instances whose image or rescue image is ``image_id`` (catalog query)."""
    return fetch_all(conn, "SELECT * FROM instances WHERE deleted_at IS NULL AND"
                           " (image_id=? OR json_extract(extra, '$.rescue_image_id')=?)", (image_id, image_id))


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks (call it in a worker thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ComputeManager:
    """Runs driver steps for instances on this host."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        driver: ComputeDriver,
        image_store: ImageStore,
        image_cache: ImageCache,
        events: EventBus,
    ) -> None:
        self.config = config
        self.host = config.host_name
        self.catalog = catalog
        self.driver = driver
        self.store = image_store
        self.volumes: Any = None  # set by ComputeService: attached volumes (hvd.compute.volumes)
        self.cache = image_cache
        self.events = events
        self.instances_path = Path(config.host.instances_path)
        self.network: Any = None  # set by the daemon when networking runs: plug/unplug ports
        self.peers: PeerCaller | None = None  # set by the daemon in a cluster: images from other hosts

    # --- helpers ----------------------------------------------------------------------------

    async def set_task(self, inst_id: str, expect: TaskState | None, task: TaskState,
                       expect_host: str | None = None) -> None:
        """Advance task_state by compare-and-swap; fails (InvalidState) if someone else moved it,
        e.g. a delete during a build, or (with ``expect_host``) placed the instance elsewhere."""
        await self.catalog.propose(
            InstanceUpdate(id=inst_id, expect_task_state=[expect], task_state=task, updated_at=now_iso(),
                           expect_host=None if expect_host is None else [expect_host])
        )
        self.events.publish("instance.task", instance_id=inst_id, task_state=task)

    async def image_row(self, image_id: str) -> dict[str, Any]:
        row = await self.catalog.read(fetch_one, "SELECT * FROM images WHERE id=?", (image_id,))
        if row is None:
            raise NotFound(f"Image {image_id} could not be found")
        return row

    async def cached_image(self, image_id: str, inst: dict[str, Any] | None = None) -> tuple[Path, str]:
        """The cached base of an image (fetched from the local store the first time). When the
        image is deleted and ``inst`` runs on it, from another host's image cache instead."""
        if self.cache.is_cached(image_id):
            row = await self.catalog.read(fetch_one, "SELECT disk_format FROM images WHERE id=?", (image_id,))
            fmt = row["disk_format"] if row else "raw"
            return self.cache.path_for(image_id), self.cache.format_of(fmt)
        image = await self.image_row(image_id)
        if image["status"] != "active":
            if self.peers is None or not base_source.from_peer_caches(image, inst):
                raise BadRequest(f"Image {image_id} is {image['status']}, not active")
            return await self._base_from_peer_caches(image, inst or {})
        source = self.store.path(image_id)

        async def fetch(dest: Path) -> None:
            if source.exists() and image["disk_format"] == "raw":
                # written sparse (zero runs become holes): volumes copied from the base stay sparse
                await qemu_img.run(qemu_img.convert_argv(source, dest, "raw", "raw"))
                os.truncate(dest, source.stat().st_size)  # qemu-img pads to 512 bytes: the image's bytes exactly
            elif source.exists():
                await asyncio.get_running_loop().run_in_executor(None, shutil.copyfile, source, dest)
            elif self.peers is not None:  # another host holds it: stream it from there
                await transfer.fetch_to(self.peers, self.catalog, image, dest)
            else:
                raise NotFound(f"the data of image {image_id} is not on host {self.host}")

        path = await self.cache.ensure_cached(image_id, fetch, image["disk_format"])
        return path, self.cache.format_of(image["disk_format"])

    async def _base_from_peer_caches(self, image: dict[str, Any], inst: dict[str, Any]) -> tuple[Path, str]:
        assert self.peers is not None
        peers = self.peers
        users = await self.catalog.read(instances_using, image["id"])
        hosts = base_source.cache_holders(inst, self.host, users)
        # the holder sends its base as cached there: already raw when the hosts force raw bases
        fmt = self.cache.format_of(image["disk_format"])

        async def fetch(dest: Path) -> None:
            await transfer.fetch_base_to(peers, hosts, image["id"], dest)

        return await self.cache.ensure_cached(image["id"], fetch, fmt), fmt

    async def spec_of(self, inst: dict[str, Any], *, image_id: str | None = None, rescue: bool = False,
                      flavor: dict[str, Any] | None = None) -> InstanceSpec:
        volumes = await self.volumes.disks_of(inst) if self.volumes is not None else ()
        if any(v.boot for v in volumes):  # booted from a volume: no image in the cache needed
            image_path, image_format = Path(), "raw"
        else:
            image_path, image_format = await self.cached_image(image_id or inst["image_id"], inst)
        flavor = flavor or inst["flavor"]
        instance_dir = self.instances_path / inst["id"]
        nics: tuple[Nic, ...] = ()
        if self.network is not None:
            nics = tuple(await self.network.nics_of(inst["id"]))
        config_drive = instance_dir / DISK_CONFIG if inst["config_drive"] else None
        return InstanceSpec(
            uuid=inst["id"],
            instance_id=int(inst["seq"]),
            name=inst["name"],
            hostname=hostname_of(inst["name"]),
            vcpus=int(flavor["vcpus"]),
            memory_mib=int(flavor["ram_mb"]),
            root_gb=int(flavor["disk_gb"]),
            ephemeral_gb=int(flavor.get("ephemeral_gb", 0)),
            swap_mb=int(flavor.get("swap_mb", 0)),
            image_id=image_id or inst["image_id"],
            image_path=image_path,
            image_format=image_format,
            instance_dir=instance_dir,
            volumes=volumes,
            nics=nics,
            config_drive=config_drive,
            rescue=rescue,
            metadata=dict(inst["metadata"]),
            name_prefix=self.config.compute.instance_name_prefix,
        )

    async def write_config_drive(self, inst: dict[str, Any], spec: InstanceSpec) -> None:
        if spec.config_drive is None:
            return
        from hvd.storage import config_drive

        nics = await self.network.network_data(inst["id"]) if self.network is not None else []
        # the same builder as the metadata service (hvd.net.metadata): both say the same
        facts = metadata_content.facts_of(inst, availability_zone=self.config.host.availability_zone, nics=nics)
        await config_drive.write_config_drive(spec.config_drive, metadata_content.config_drive_files(facts))

    # --- build ------------------------------------------------------------------------------

    async def build(self, inst: dict[str, Any]) -> None:
        """The seed's launch steps on this host, after the leader's claim: networking →
        block_device_mapping (image cache, config drive) → spawning (disk, XML, plug, start).

        On failure everything this host made is removed and the error raised (placement retries).
        Raises InvalidState when the instance was deleted meanwhile (task_state moved away).
        """
        inst_id = inst["id"]
        async with Reverter() as revert:
            # only while the placement still names this host: a build call that arrives after the
            # leader gave up on this host (and re-placed the instance) must not start
            await self.set_task(inst_id, TaskState.SCHEDULING, TaskState.NETWORKING, expect_host=self.config.host_name)
            checkpoint("build.networking")
            if self.network is not None:
                await self.network.plug_instance(inst)
                revert.add("unplug network", lambda: self.network.unplug_instance(inst))
            await self.set_task(inst_id, TaskState.NETWORKING, TaskState.BLOCK_DEVICE_MAPPING)
            checkpoint("build.block_device_mapping")
            if self.volumes is not None and inst["extra"].get("block_device_mapping"):
                revert.add("detach volumes", lambda: self.volumes.release_server(inst, deleting=False))
                await self.volumes.connect_at_build(inst)  # boot volume (vda) and data volumes
            spec = await self.spec_of(inst)
            if spec.root_gb and not spec.boots_from_volume:
                image = await self.image_row(inst["image_id"])
                if image["virtual_size"] and image["virtual_size"] > spec.root_gb * 2**30:
                    raise BadRequest(
                        f"Flavor's disk is too small for requested image: image is"
                        f" {image['virtual_size']} bytes, flavor disk is {spec.root_gb} GB"
                    )
            spec.instance_dir.mkdir(parents=True, exist_ok=True)
            revert.add("remove instance dir", lambda: self._rmtree(spec.instance_dir))
            await self.write_config_drive(inst, spec)
            await self.set_task(inst_id, TaskState.BLOCK_DEVICE_MAPPING, TaskState.SPAWNING)
            checkpoint("build.spawning")
            await self.driver.spawn(spec)
            revert.add("destroy domain", lambda: self.driver.destroy(spec))
            checkpoint("build.spawned")
            revert.success()

    async def _rmtree(self, path: Path) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: shutil.rmtree(path, ignore_errors=True))

    async def cleanup_host(self, inst: dict[str, Any]) -> None:
        """Remove everything of the instance from this host (domain, files, network); idempotent."""
        await self.driver.destroy(inst["id"])
        await self._rmtree(self.instances_path / inst["id"])
        await self._rmtree(self.instances_path / (inst["id"] + RESIZE_SUFFIX))
        if self.network is not None:
            await self.network.unplug_instance(inst)

    # --- power operations -------------------------------------------------------------------

    async def stop(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.power_off(inst["id"], self.config.compute.shutdown_timeout_s)
        return PowerState.SHUTDOWN

    async def start(self, inst: dict[str, Any]) -> PowerState:
        spec = await self.spec_of(inst)
        if self.network is not None:
            await self.network.plug_instance(inst)
        await self.write_config_drive(inst, spec)
        await self.driver.power_on(spec)
        return PowerState.RUNNING

    async def reboot(self, inst: dict[str, Any], hard: bool) -> PowerState:
        spec = await self.spec_of(inst)
        if hard and self.network is not None:
            await self.network.plug_instance(inst)
        await self.driver.reboot(spec, hard, self.config.compute.reboot_timeout_s)
        return PowerState.RUNNING

    async def pause(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.pause(inst["id"])
        return PowerState.PAUSED

    async def unpause(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.unpause(inst["id"])
        return PowerState.RUNNING

    async def suspend(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.suspend(inst["id"])
        return PowerState.SHUTDOWN

    async def resume(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.resume(inst["id"])
        return PowerState.RUNNING

    async def rescue(self, inst: dict[str, Any], image_id: str | None) -> PowerState:
        spec = await self.spec_of(inst, rescue=True)
        rescue_path, rescue_fmt = await self.cached_image(image_id or inst["image_id"])
        await self.driver.rescue(spec, rescue_path, rescue_fmt)
        return PowerState.RUNNING

    async def unrescue(self, inst: dict[str, Any]) -> PowerState:
        await self.driver.unrescue(await self.spec_of(inst))
        return PowerState.RUNNING

    # --- images -----------------------------------------------------------------------------

    async def snapshot_to_image(self, inst: dict[str, Any], image_id: str, name: str,
                                tasks: tuple[TaskState, ...], properties: dict[str, str]) -> None:
        """Create image `image_id` from the instance's disk (pause → copy → resume → upload).

        `tasks` = the task_state sequence to step through (first = current): one step before the
        copy, the next after it. On failure the image is marked killed and its data removed.
        """
        image = await self.image_row(inst["image_id"]) if inst["image_id"] else None
        await self.catalog.propose(
            ImageCreate(
                id=image_id, name=name, owner=inst["project_id"], disk_format="qcow2", container_format="bare",
                visibility="private", min_disk=int(inst["flavor"]["disk_gb"]),
                min_ram=int(image["min_ram"]) if image else 0,
                properties={**(image["properties"] if image else {}), **properties}, created_at=now_iso(),
            )
        )
        try:
            if len(tasks) > 1:
                await self.set_task(inst["id"], tasks[0], tasks[1])
            await self.catalog.propose(
                ImageSetStatus(id=image_id, status="saving", expect=["queued"], host=self.host,
                               updated_at=now_iso())
            )
            dest = self.store.path(image_id)
            await self.driver.snapshot(inst["id"], dest)
            checkpoint("snapshot.copied")
            if len(tasks) > 2:
                await self.set_task(inst["id"], tasks[1], tasks[2])
            info = await qemu_img.info(dest)
            loop = asyncio.get_running_loop()
            checksum = await loop.run_in_executor(None, file_sha256, dest)
            size = dest.stat().st_size
            await self.catalog.propose(
                ImageSetStatus(id=image_id, status="active", expect=["saving"], size=size,
                               virtual_size=info.virtual_size, checksum=checksum, updated_at=now_iso())
            )
            if self.peers is not None:  # a snapshot is kept on other hosts too, like an upload
                transfer.spread_later(self.peers, self.catalog, image_id, self.config.images.replicas)
        except BaseException:
            self.store.delete(image_id)
            with contextlib.suppress(Exception):
                await self.catalog.propose(
                    ImageSetStatus(id=image_id, status="killed", expect=["queued", "saving"], updated_at=now_iso())
                )
            raise

    # --- rebuild, resize, shelve ------------------------------------------------------------

    async def rebuild(self, inst: dict[str, Any], image_id: str) -> PowerState:
        """New root disk from `image_id`; same flavor, claims and network (the seed's rebuild)."""
        new_spec = await self.spec_of(inst, image_id=image_id)
        await self.driver.destroy(inst["id"])
        # the old guest is gone: the new one posts its own password (a stored one would have it refused)
        await self.catalog.propose(InstanceUpdate(id=inst["id"], extra=NEW_GUEST, updated_at=now_iso()))
        await self._rmtree(new_spec.instance_dir)
        new_spec.instance_dir.mkdir(parents=True, exist_ok=True)
        await self.write_config_drive({**inst, "image_id": image_id}, new_spec)
        await self.driver.spawn(new_spec)
        return PowerState.RUNNING

    async def resize_same_host(self, inst: dict[str, Any], new_flavor: dict[str, Any]) -> PowerState:
        """Stop, keep the old dir as `<uuid>_resize`, boot a copy of the disk with the new flavor."""
        old_dir = self.instances_path / inst["id"]
        keep_dir = self.instances_path / (inst["id"] + RESIZE_SUFFIX)
        old_power = await self.driver.get_power_state(inst["id"])
        async with Reverter() as revert:
            await self.driver.power_off(inst["id"], self.config.compute.shutdown_timeout_s)
            await self.driver.destroy(inst["id"], keep_disks=True)
            revert.add("redefine old domain", lambda: self._restore_old(inst, old_power))
            old_dir.rename(keep_dir)
            revert.add("restore old dir", lambda: self._move_back(old_dir, keep_dir))
            checkpoint("resize.moved")
            spec = await self.spec_of(inst, flavor=new_flavor)
            spec.instance_dir.mkdir(parents=True, exist_ok=True)
            await asyncio.get_running_loop().run_in_executor(
                None, shutil.copyfile, keep_dir / DISK, spec.instance_dir / DISK
            )
            await self.write_config_drive(inst, spec)
            await self.driver.spawn(replace(spec, reuse_disks=True))
            revert.success()
        return PowerState.RUNNING

    async def _move_back(self, old_dir: Path, keep_dir: Path) -> None:
        await self._rmtree(old_dir)
        if keep_dir.exists():
            keep_dir.rename(old_dir)

    async def _restore_old(self, inst: dict[str, Any], power: PowerState) -> None:
        await self.driver.destroy(inst["id"], keep_disks=True)
        spec = await self.spec_of(inst)
        await self.driver.spawn(replace(spec, reuse_disks=True))
        if power != PowerState.RUNNING:
            await self.driver.power_off(inst["id"], 0)

    async def confirm_resize(self, inst: dict[str, Any]) -> None:
        await self._rmtree(self.instances_path / (inst["id"] + RESIZE_SUFFIX))

    async def revert_resize(self, inst: dict[str, Any], old_flavor: dict[str, Any], was_running: bool) -> PowerState:
        old_dir = self.instances_path / inst["id"]
        keep_dir = self.instances_path / (inst["id"] + RESIZE_SUFFIX)
        await self.driver.destroy(inst["id"], keep_disks=True)
        if keep_dir.exists():
            await self._move_back(old_dir, keep_dir)
        spec = await self.spec_of({**inst, "flavor": old_flavor})
        await self.driver.spawn(replace(spec, reuse_disks=True))
        if not was_running:
            await self.driver.power_off(inst["id"], 0)
            return PowerState.SHUTDOWN
        return PowerState.RUNNING

    async def unshelve(self, inst: dict[str, Any], image_id: str) -> None:
        """Boot the instance again from its `<name>-shelved` image (as a launch), its volumes
        reconnected for this host (opened directly when they live here, else over NBD)."""
        reconnected = await self.volumes.connect_here(inst) if self.volumes is not None else []
        async with Reverter() as revert:
            if self.volumes is not None:
                revert.add("volumes offloaded again", lambda: self.volumes.restore(reconnected))
            spec = await self.spec_of(inst, image_id=image_id)
            if self.network is not None:
                await self.network.plug_instance(inst)
                revert.add("unplug network", lambda: self.network.unplug_instance(inst))
            spec.instance_dir.mkdir(parents=True, exist_ok=True)
            revert.add("remove instance dir", lambda: self._rmtree(spec.instance_dir))
            await self.write_config_drive(inst, spec)
            await self.driver.spawn(spec)
            revert.success()
