"""Block storage (Cinder's part of hvd): volumes, snapshots, backups, volume types.

Modules: ``states`` (pure state tables and refusals), ``backend`` (the backend interface),
``file_backend`` / ``lvm_backend`` (adapters), ``lvm_argv`` (pure argv builders), ``scheduler``
(pure backend choice), ``claims`` (pure capacity admission: apply refuses a create or an extend
past a backend's reported total less its reserve, CapacityExceeded), ``backup_plan`` (pure
chunk/manifest planning), ``backup_io`` (chunk I/O in an executor), ``service`` (VolumeService:
places volumes, does the work of this host's volumes in idempotent steps it picks up from the
catalog, and repairs after a crash: redo + orphan removal).
Catalog commands: hvd/catalog/cmd_volumes.py; API hvd/api/v1/volumes.py, volume_data.py.

CONTRACT FOR THE COMPUTE SIDE (attach/detach, online extend, boot from volume, NBD export)
==========================================================================================

Volume record (``SELECT * FROM volumes``, JSON/bool columns decoded by hvd.catalog.sql.row_dict):
  id, project_id, user_id, name, description, size_gb, status, previous_status, host (the hvd host
  holding the data), backend (name of the backend on that host), volume_type_id, availability_zone,
  bootable, multiattach (from the type's ``multiattach`` extra spec), volume_format ("raw"|"qcow2"),
  source_image_id / source_snapshot_id / source_volume_id / restore_backup_id, new_size_gb (target
  of a running extend), error, metadata, created_at, updated_at.

Volume states (``states.py``): creating, available, reserved, attaching, in-use, detaching,
extending, deleting, error, error_deleting, backing-up, restoring-backup, uploading. The volume's status
while attachments change is DERIVED from its attachments (``states.status_from_attachments``):
none → available; any detaching → detaching; any attaching → attaching; any attached → in-use;
else reserved. A volume busy with another operation (backing-up or uploading with force, extending online)
keeps that status and refuses new attachments and detaches.

Attachment record (``volume_attachments``): id, volume_id, instance_id, host (compute host that
attached it), device (e.g. "vdb", set when complete), status (reserved | attaching | attached |
detaching), attach_mode ("rw"|"ro"), connection_info (dict, below), error, created_at, updated_at.
One attachment per (volume, server).

Attach flow (each step one catalog command from hvd.catalog.cmd_volumes, all CAS-guarded):
  1. ``AttachmentReserve(id, volume_id, instance_id, attach_mode, created_at)``
       volume available → reserved (multi-attach volumes may also be reserved while in-use);
       refused (409 InvalidState/Conflict) otherwise, or if that server already has it.
  2. ``AttachmentAttaching(id, host, connection_info, updated_at)``   reserved → attaching
       (volume → attaching). Get connection_info from ``VolumeService.connection_info(volume)``
       (or ``backend.connection_info(volume_id)`` on the volume's host).
  3. ``AttachmentComplete(id, device, updated_at)``                  attaching → attached
       (volume → in-use).
  On failure of 2/3: ``AttachmentRemove(id, expect=["reserved","attaching"], updated_at)``
  (volume back to available, or in-use if attached elsewhere).
Detach flow:
  1. ``AttachmentBeginDetach(id, updated_at)``   attached → detaching (volume → detaching);
       refused while the volume is backing-up, uploading or extending.
  2a. done: ``AttachmentRemove(id, expect=["detaching"], updated_at)`` (volume → available/in-use)
  2b. the guest refused: ``AttachmentDetachFailed(id, error, updated_at)`` (→ attached, in-use).
  Server deleted: ``AttachmentRemove(id, updated_at)`` from any state.
Online extend of an in-use volume:
  ``VolumeBegin(id, op="extend_online", new_size_gb, updated_at)``  in-use → extending
  (refusals: size not greater, gigabytes quota). Grow the data first with
  ``VolumeService.grow_data(volume, new_size_gb)`` (backend extend on the volume's host), then
  libvirt block resize, then ``VolumeFinish(id, op="extend_online", ok, error, updated_at)``
  → in-use with size_gb = new size (ok) or the old size (failed).
Upload to image (the API): ``VolumeBegin(id, op="upload", force, updated_at)`` (available, or in-use
  with force → uploading), then ``ImageCreate`` (queued, properties ``volume_id``); the volume's
  host copies the data into the image and ends with ``VolumeFinish(op="upload")`` (→ previous status).
Boot from volume: ``VolumeService.create_placed(VolumeRequest(size_gb, az, type extra_specs),
lambda backend: VolumeCreate(..., backend.host, backend.name, source_image_id=...))`` places it
and proposes the create, trying the next backend when the catalog refuses the capacity claim (the
volume's host picks it up), ``VolumeService.wait_stable("volumes", id, timeout)`` for available,
then attach as above with device "vda"; ``bootable`` is true for volumes made from an image.
The volume service's pickup loop leaves online extends (extending with previous_status in-use) to
the compute side.

connection_info (what a backend returns, ``VolumeBackend.connection_info``):
  file backend: ``{"type": "file", "path": "<dir>/volume-<id>", "format": "raw" | "qcow2"}``
  lvm backend:  ``{"type": "block", "path": "/dev/<vg>/volume-<id>", "format": "raw"}``
A compute host other than the volume's host cannot use these paths: it needs an export (NBD,
hvd.storage.volumes.nbd), keyed by the volume's ``host``. A server that moves keeps its
attachments: ``AttachmentMoved`` (hvd.catalog.cmd_volume_moves) re-points their host and
connection_info; a shelved-offloaded server's hold ``{"type": "none"}`` (hvd.compute.volume_reach).

Events on /v1/events: ``volume.status`` (and ``snapshot.status``, ``backup.status``) with id, status
and project_id, published by the host that takes a request and by the host that finishes a step.
"""
