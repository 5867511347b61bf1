"""Domain XML builder: structure, disk order, rescue layout, NICs, console, escaping, validity."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hvd.drivers.base import InstanceSpec, Nic, domain_name
from hvd.drivers.libvirt.xml import METADATA_NS, disk_layout, domain_xml, interface_xml

UUID = "0f4b1c64-5a0e-4a43-9a3c-1d1b7e1f2a3b"


def make_spec(**overrides: object) -> InstanceSpec:
    base = InstanceSpec(
        uuid=UUID,
        instance_id=0x7E0001,
        name="web <1> & co",
        hostname="web-1",
        vcpus=2,
        memory_mib=256,
        root_gb=1,
        image_id="917d60ef-f663-4e2d-b85b-e4511bb56bc2",
        image_path=Path("/var/lib/hvd/instances/_base/60bba5916c6c90ed2ef7d3263de8f653111dd35f"),
        image_format="raw",
        instance_dir=Path(f"/var/lib/hvd/instances/{UUID}"),
        nics=(Nic("fa:16:3e:00:00:01", "brq0123456789a", "tap0123456789a", 1450),),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def parse(spec: InstanceSpec, virt_type: str = "qemu") -> ET.Element:
    return ET.fromstring(domain_xml(spec, virt_type))  # type: ignore[arg-type]


def disks(root: ET.Element) -> list[tuple[str, str, str]]:
    return [
        (
            d.find("target").get("dev"),  # type: ignore[union-attr]
            d.find("source").get("file"),  # type: ignore[union-attr]
            d.find("driver").get("type"),  # type: ignore[union-attr]
        )
        for d in root.iterfind("devices/disk")
    ]


def test_domain_name_is_nova_style() -> None:
    assert domain_name(1) == "instance-00000001"
    assert domain_name(0x7E0001) == "instance-007e0001"
    assert make_spec().domain_name == "instance-007e0001"


def test_top_level_elements() -> None:
    root = parse(make_spec())
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "instance-007e0001"
    assert root.findtext("uuid") == UUID
    assert root.findtext("memory") == "256" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/type") == "hvm"
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.find("clock").get("offset") == "utc"  # type: ignore[union-attr]
    assert root.findtext("on_poweroff") == "destroy"
    assert root.find("devices/graphics") is None
    assert root.find("cpu") is None  # TCG keeps QEMU's default CPU


def test_kvm_uses_host_model_cpu() -> None:
    root = parse(make_spec(), "kvm")
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-model"  # type: ignore[union-attr]


def test_names_are_escaped_and_metadata_kept() -> None:
    text = domain_xml(make_spec(), "qemu")
    assert "web &lt;1&gt; &amp; co" in text
    root = ET.fromstring(text)
    assert root.findtext(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}name") == "web <1> & co"


def test_root_disk_only() -> None:
    spec = make_spec()
    assert disks(parse(spec)) == [("vda", f"{spec.instance_dir}/disk", "qcow2")]


def test_disk_order_root_eph_swap_config_drive_last() -> None:
    spec = make_spec(ephemeral_gb=1, swap_mb=512, config_drive=Path(f"/var/lib/hvd/instances/{UUID}/disk.config"))
    d = spec.instance_dir
    assert disks(parse(spec)) == [
        ("vda", f"{d}/disk", "qcow2"),
        ("vdb", f"{d}/disk.eph0", "qcow2"),
        ("vdc", f"{d}/disk.swap", "qcow2"),
        ("vdd", f"{d}/disk.config", "raw"),
    ]
    assert all(t.get("bus") == "virtio" for t in parse(spec).iterfind("devices/disk/target"))


def test_rescue_boots_rescue_disk_with_original_as_vdb() -> None:
    spec = make_spec(rescue=True, config_drive=Path(f"/var/lib/hvd/instances/{UUID}/disk.config"))
    d = spec.instance_dir
    assert disks(parse(spec)) == [
        ("vda", f"{d}/disk.rescue", "qcow2"),
        ("vdb", f"{d}/disk", "qcow2"),
        ("vdc", f"{d}/disk.config", "raw"),
    ]
    assert [x.dev for x in disk_layout(make_spec(rescue=True))] == ["vda", "vdb"]


def test_interfaces() -> None:
    nics = (Nic("fa:16:3e:00:00:01", "brqa", "tapa", 1450), Nic("fa:16:3e:00:00:02", "brqb", "tapb"))
    root = parse(make_spec(nics=nics))
    found = root.findall("devices/interface")
    assert len(found) == 2
    first = found[0]
    assert first.get("type") == "bridge"
    assert first.find("mac").get("address") == "fa:16:3e:00:00:01"  # type: ignore[union-attr]
    assert first.find("source").get("bridge") == "brqa"  # type: ignore[union-attr]
    assert first.find("target").get("dev") == "tapa"  # type: ignore[union-attr]
    assert first.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert first.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    assert found[1].find("mtu").get("size") == "1500"  # type: ignore[union-attr]
    assert ET.fromstring(interface_xml(nics[0])).find("target").get("dev") == "tapa"  # type: ignore[union-attr]


def test_serial_console_is_a_pty_logged_to_file_across_restarts() -> None:
    """A pty, so a user can attach (virDomainOpenConsole), with a <log> that keeps everything the
    guest writes, attached or not. append='on': QEMU's restarts (hard reboot, stop/start, crash)
    keep the console history; virtlogd, which libvirt hands the log file to, caps it by rotation."""
    spec = make_spec()
    root = parse(spec)
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty"
    log = serial.find("log")
    assert log is not None and log.get("file") == f"{spec.instance_dir}/console.log"
    assert log.get("append") == "on"
    console = root.find("devices/console")
    assert console is not None and console.get("type") == "pty"
    assert console.find("target").get("type") == "serial"  # type: ignore[union-attr]


def test_vnc_display_only_when_asked_for() -> None:
    """No display by default; with vnc_listen a VNC server on that address (port picked by libvirt
    at each start: the proxy reads it from the live XML) and a VGA card to draw on."""
    root = ET.fromstring(domain_xml(make_spec(), "qemu", vnc_listen="127.0.0.1"))
    graphics = root.findall("devices/graphics")
    assert len(graphics) == 1 and graphics[0].get("type") == "vnc"
    assert graphics[0].get("autoport") == "yes" and graphics[0].get("listen") == "127.0.0.1"
    assert graphics[0].find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]
    assert graphics[0].get("port") is None and graphics[0].get("passwd") is None
    assert root.find("devices/video/model").get("type") == "vga"  # type: ignore[union-attr]
    assert parse(make_spec()).find("devices/video") is None


def test_smbios_says_openstack_for_cloud_init() -> None:
    root = parse(make_spec())
    entries = {e.get("name"): e.text for e in root.iterfind("sysinfo/system/entry")}
    assert entries["product"] == "OpenStack Compute" and entries["uuid"] == UUID


def test_deterministic() -> None:
    assert domain_xml(make_spec(), "qemu") == domain_xml(make_spec(), "qemu")


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate/xmllint not installed (the libvirt contract suite validates on define)",
)
@pytest.mark.parametrize("variant", ["plain", "full", "rescue", "vnc"])
def test_validates_against_libvirt_schema(tmp_path: Path, variant: str) -> None:
    spec = make_spec()
    if variant not in ("plain", "vnc"):
        spec = dataclasses.replace(
            spec,
            ephemeral_gb=1,
            swap_mb=64,
            config_drive=spec.instance_dir / "disk.config",
            rescue=variant == "rescue",
        )
    path = tmp_path / "domain.xml"
    path.write_text(domain_xml(spec, "kvm", vnc_listen="127.0.0.1" if variant == "vnc" else None))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
