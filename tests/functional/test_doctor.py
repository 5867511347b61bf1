"""`hvd doctor` on this machine: a truthful table (this kernel has VXLAN but no 802.1Q)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvd.config import load_config
from hvd.doctor import probe_link_kinds, run_checks

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="doctor probes kernel links in a netns: needs root")


def _kernel_has_8021q() -> bool:
    out = subprocess.run(["ip", "link", "add", "hvdt-vlprobe", "type", "veth", "peer", "name", "hvdt-vlprobe1"],
                         capture_output=True)
    assert out.returncode == 0
    try:
        return subprocess.run(["ip", "link", "add", "link", "hvdt-vlprobe", "name", "hvdt-vlprobe.7", "type", "vlan",
                               "id", "7"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "link", "del", "hvdt-vlprobe"], capture_output=True)


def test_link_probe_matches_the_kernel_and_cleans_up() -> None:
    before = set(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else set()
    results = probe_link_kinds()
    assert results["bridge"] is None and results["veth"] is None and results["vxlan"] is None
    assert (results["vlan"] is None) == _kernel_has_8021q()
    after = set(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else set()
    assert not {p for p in after - before if p.name.startswith("hvd-doctor-")}


def test_checks_report_vlan_truthfully() -> None:
    checks = {c.name: c for c in run_checks(load_config(None, environ={}))}
    assert checks["link vxlan"].status == "OK"
    if _kernel_has_8021q():
        assert checks["link vlan"].status == "OK"
    else:
        assert checks["link vlan"].status == "WARN"
        assert "802.1Q" in checks["link vlan"].detail
        assert "8021q" in checks["link vlan"].fix
    assert checks["qemu-img"].status == "OK" and "qemu-img version" in checks["qemu-img"].detail


def test_cli_prints_table_and_exit_status(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hvd", "doctor"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert "hvd doctor" in out.stdout and "link vxlan" in out.stdout
    assert out.returncode == (1 if "FAIL" in out.stdout else 0)
    # a libvirt URI nobody listens on is a FAIL with a fix, and exit status 1
    cfg = tmp_path / "hvd.toml"
    cfg.write_text(f'[libvirt]\nuri = "qemu+unix:///system?socket={tmp_path}/none.sock"\n')
    bad = subprocess.run([sys.executable, "-m", "hvd", "doctor", "-c", str(cfg)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "libvirtd" in bad.stdout


def test_novnc_check_says_whether_browser_consoles_are_served(tmp_path: Path) -> None:
    from hvd.doctor import check_novnc

    (tmp_path / "vnc_lite.html").write_text("<html></html>")
    cases = {"": ("OK", "off"), str(tmp_path / "none"): ("WARN", "no vnc_lite.html"), str(tmp_path): ("OK", "serving")}
    for directory, (status, words) in cases.items():
        check = check_novnc(load_config(None, environ={"HVD_COMPUTE__NOVNC_DIR": directory}))
        assert check.status == status and words in check.detail, (directory, check)
