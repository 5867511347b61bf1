"""Volumes in the domain XML: connection info → VolumeDisk, device choice, <disk> elements, boot
from volume, and validity against libvirt's schema."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hvd.drivers.libvirt.volume_xml import disk_element, volume_targets
from hvd.drivers.libvirt.xml import domain_xml
from hvd.drivers.volumes import VolumeDisk, device_index, device_name, disk_from_connection, next_device
from hvd.errors import BadRequest
from tests.unit.test_domain_xml import make_spec

VOL = "7c0d2e0a-1f7e-4a4b-9a25-2f1c6d2b0e11"


def test_connection_info_shapes() -> None:
    f = disk_from_connection(VOL, "vdb", {"type": "file", "path": "/v/volume-x", "format": "qcow2"})
    assert (f.kind, f.path, f.fmt, f.serial) == ("file", "/v/volume-x", "qcow2", VOL[:20])
    b = disk_from_connection(VOL, "vdc", {"type": "block", "path": "/dev/vg/volume-x"}, shareable=True)
    assert (b.kind, b.path, b.fmt, b.shareable) == ("block", "/dev/vg/volume-x", "raw", True)
    n = disk_from_connection(VOL, "vdd", {"type": "nbd", "host": "10.0.0.2", "port": 10809, "export": "v", "tls": True})
    assert (n.kind, n.host, n.port, n.export, n.tls) == ("nbd", "10.0.0.2", 10809, "v", True)


@pytest.mark.parametrize("info", [
    {"type": "iscsi"}, {"type": "file", "path": "/x", "format": "vmdk"}, {"type": "file"}, {"type": "block"},
    {"type": "nbd", "host": "h", "port": 0, "export": "e"}, {"type": "nbd", "host": "h", "port": "1", "export": "e"},
])
def test_bad_connection_info_is_a_clear_400(info: dict[str, object]) -> None:
    with pytest.raises(BadRequest, match=VOL):
        disk_from_connection(VOL, "vdb", info)


def test_device_names_round_trip_and_next_free() -> None:
    for i in range(0, 60):
        assert device_index(device_name(i)) == i
    assert device_name(26) == "vdaa" and device_index("sda") == -1 and device_index("vd") == -1
    assert next_device(["vda"]) == "vdb"
    assert next_device(["vda", "vdb", "vdd"]) == "vdc"
    assert next_device(["vda", "vdb"], "vde") == "vde"
    assert next_device(["vda", "vdb"], "vdb") == "vdc"  # taken: the next free one
    with pytest.raises(BadRequest):
        next_device([], "vda")  # never the root disk's
    with pytest.raises(BadRequest):
        next_device([], "/dev/sdb")


def _disks(xml: str) -> list[tuple[str, str, str | None]]:
    root = ET.fromstring(xml)
    return [(d.get("type", ""), d.find("target").get("dev", ""), d.findtext("serial"))  # type: ignore[union-attr]
            for d in root.iterfind("devices/disk")]


def test_file_block_and_nbd_elements() -> None:
    f = disk_element(VolumeDisk(VOL, "vdb", "file", path="/v/f", fmt="qcow2"))
    driver = f.find("driver")
    assert driver is not None and driver.attrib == {"name": "qemu", "type": "qcow2", "cache": "none", "io": "native",
                                                    "discard": "unmap"}
    assert f.find("source").get("file") == "/v/f" and f.findtext("serial") == VOL[:20]  # type: ignore[union-attr]
    b = disk_element(VolumeDisk(VOL, "vdc", "block", path="/dev/vg/lv", read_only=True, shareable=True))
    assert b.find("source").get("dev") == "/dev/vg/lv"  # type: ignore[union-attr]
    assert b.find("readonly") is not None and b.find("shareable") is not None
    n = disk_element(VolumeDisk(VOL, "vdd", "nbd", host="10.1.0.2", port=10809, export="volume-x", tls=True))
    src = n.find("source")
    assert n.get("type") == "network" and src is not None and src.attrib == {"protocol": "nbd", "name": "volume-x",
                                                                            "tls": "yes"}
    assert src.find("host").attrib == {"name": "10.1.0.2", "port": "10809"}  # type: ignore[union-attr]
    assert "io" not in n.find("driver").attrib  # type: ignore[union-attr]  # Linux AIO is for local storage
    # a directory without O_DIRECT: the driver's per-volume cache wins, and io=native goes with it
    w = disk_element(VolumeDisk(VOL, "vdb", "file", path="/v/f", cache="writethrough"))
    assert w.find("driver").get("cache") == "writethrough" and "io" not in w.find("driver").attrib  # type: ignore[union-attr]


def test_volumes_follow_the_local_disks_without_collisions() -> None:
    spec = make_spec(config_drive=Path("/i/disk.config"), volumes=(
        VolumeDisk(VOL, "vdb", "file", path="/v/a"),  # recorded before the config drive took vdb
        VolumeDisk("b" * 36, "vdc", "block", path="/dev/vg/b"),
    ))
    assert _disks(domain_xml(spec, "qemu")) == [
        ("file", "vda", None), ("file", "vdb", None), ("file", "vdd", VOL[:20]), ("block", "vdc", "b" * 20)]
    assert volume_targets(domain_xml(spec, "qemu")) == {VOL[:20]: "vdd", "b" * 20: "vdc"}


def test_boot_from_volume_is_the_first_disk_and_there_is_no_local_root() -> None:
    spec = make_spec(swap_mb=64, volumes=(VolumeDisk("d" * 36, "vdc", "file", path="/v/d"),
                                          VolumeDisk(VOL, "vda", "block", path="/dev/vg/boot")))
    assert _disks(domain_xml(spec, "qemu")) == [
        ("block", "vda", VOL[:20]), ("file", "vdb", None), ("file", "vdc", "d" * 20)]
    assert "/disk'" not in domain_xml(spec, "qemu") and "/disk\"" not in domain_xml(spec, "qemu")
    # rescue of such a server: the rescue disk boots, the boot volume moves aside
    rescued = _disks(domain_xml(dataclasses.replace(spec, rescue=True), "qemu"))
    assert rescued[0][1] == "vda" and rescued[0][2] is None and ("block", "vdd", VOL[:20]) in rescued


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate/xmllint not installed (the libvirt contract suite validates on define)",
)
def test_validates_against_libvirt_schema(tmp_path: Path) -> None:
    spec = make_spec(volumes=(
        VolumeDisk(VOL, "vda", "file", path="/v/boot", fmt="qcow2"),
        VolumeDisk("b" * 36, "vdb", "block", path="/dev/vg/b", shareable=True),
        VolumeDisk("c" * 36, "vdc", "nbd", host="10.0.0.2", port=10809, export="c", tls=True, read_only=True),
    ))
    path = tmp_path / "domain.xml"
    path.write_text(domain_xml(spec, "kvm"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a server leaving its volume's host: the destination's definition reaches it over NBD --------

def _source_domain() -> str:
    spec = make_spec(volumes=(VolumeDisk(VOL, "vdb", "file", path="/v/volume-x"),
                              VolumeDisk("b" * 36, "vdc", "nbd", host="10.0.0.3", port=10810, export="b")))
    return domain_xml(spec, "qemu")


def test_destination_xml_points_the_moving_volume_at_nbd_and_keeps_the_rest() -> None:
    from hvd.drivers.libvirt.volume_xml import with_network_volumes

    source = _source_domain()
    nbd = VolumeDisk(VOL, "vdz", "nbd", host="10.0.0.2", port=10809, export="volume-x", tls=True)
    dest = with_network_volumes(source, (nbd,))
    assert _disks(dest) == [("file", "vda", None), ("network", "vdb", VOL[:20]), ("network", "vdc", "b" * 20)]
    disk = next(d for d in ET.fromstring(dest).iterfind("devices/disk") if d.findtext("serial") == VOL[:20])
    src = disk.find("source")
    assert src is not None and src.get("name") == "volume-x" and src.get("tls") == "yes"
    assert src.find("host").attrib == {"name": "10.0.0.2", "port": "10809"}  # type: ignore[union-attr]
    assert "/v/volume-x" in source and "/v/volume-x" not in dest  # the source keeps its local path
    assert with_network_volumes(source, ()) == ET.tostring(ET.fromstring(source), encoding="unicode")


def test_destination_xml_refuses_an_unknown_volume_or_a_local_disk() -> None:
    from hvd.drivers.libvirt.volume_xml import with_network_volumes

    with pytest.raises(ValueError, match="c" * 20):
        with_network_volumes(_source_domain(), (VolumeDisk("c" * 36, "vdd", "nbd", host="h", port=1, export="c"),))
    with pytest.raises(ValueError, match="not NBD"):
        with_network_volumes(_source_domain(), (VolumeDisk(VOL, "vdb", "file", path="/elsewhere"),))


def test_how_a_host_reaches_a_volume_and_what_cannot_move() -> None:
    from hvd.compute.volumes import move_blocker, reach

    assert reach("h1", "h1") == "direct" and reach("h1", "h2") == "nbd"
    assert move_blocker({"type": "file", "path": "/v/x", "format": "raw"}, VOL) is None
    assert move_blocker({"type": "block", "path": "/dev/vg/x"}, VOL) is None
    reason = move_blocker({"type": "file", "path": "/v/x", "format": "qcow2"}, VOL)
    assert reason is not None and VOL in reason and "qcow2" in reason


def test_destination_xml_goes_into_the_migration_parameters() -> None:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (scripts/setup.sh)")
    from hvd.drivers.libvirt.guest import migration_flags, migration_params

    assert migration_flags(True, False, network_volumes=True) & libvirt.VIR_MIGRATE_UNSAFE
    assert not migration_flags(True, False) & libvirt.VIR_MIGRATE_UNSAFE

    params = migration_params("qemu+tcp://10.0.0.2/system", ("vda",), dest_xml="<domain/>")
    assert params == {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"], libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<domain/>"}


def test_an_export_for_a_server_leaving_the_volume_host_takes_no_image_lock(tmp_path: Path) -> None:
    from hvd.storage.volumes.nbd import qsd_argv

    info = {"type": "file", "path": "/v/volume-x", "format": "raw"}
    locked = qsd_argv(info, "10.0.0.2", 10809, "volume-x", tmp_path / "pid")
    unlocked = qsd_argv(info, "10.0.0.2", 10809, "volume-x", tmp_path / "pid", locking=False)
    assert "driver=file,node-name=proto,filename=/v/volume-x" in locked
    assert "driver=file,node-name=proto,filename=/v/volume-x,locking=off" in unlocked
