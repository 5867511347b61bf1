"""`hvd doctor`: can this host run hvd? Each check says OK / WARN / FAIL and how to fix it."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hvd.api import novnc
from hvd.config import Config

if TYPE_CHECKING:
    from hvd.drivers.libvirt.access import Owner

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def check_libvirt(config: Config) -> Check:
    try:
        import libvirt
    except ImportError:
        return Check("libvirt", "FAIL", "libvirt-python is not installed", "pip install libvirt-python")
    try:
        conn = libvirt.open(config.libvirt.uri)
    except libvirt.libvirtError as exc:
        return Check("libvirt", "FAIL", f"cannot connect to {config.libvirt.uri}: {exc}",
                     "start libvirtd (systemctl start libvirtd, or `virtlogd -d; libvirtd -d`)")
    try:
        version = conn.getLibVersion()
        return Check("libvirt", "OK", f"{config.libvirt.uri}: libvirt {version // 1000000}.{version // 1000 % 1000}"
                     f".{version % 1000}")
    finally:
        conn.close()


def _in_vm() -> bool:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        return any(line.startswith("flags") and " hypervisor" in line for line in fh)
    return False


def check_kvm(config: Config) -> Check:
    path = Path("/dev/kvm")
    if not path.exists():
        if config.libvirt.virt_type == "kvm":
            return Check("kvm", "FAIL", "/dev/kvm is missing: guests cannot use KVM",
                         'set [libvirt] virt_type = "qemu" (TCG) or enable virtualization in the BIOS')
        return Check("kvm", "OK", "no /dev/kvm; virt_type = qemu (TCG) is configured")
    st = path.stat()
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    if group != "kvm" or mode & 0o060 != 0o060:
        return Check("kvm", "WARN", f"/dev/kvm is {group} mode {mode:o}: libvirt re-probes QEMU at every start"
                     " (up to +48 s per VM)", "chgrp kvm /dev/kvm; chmod 660 /dev/kvm; then restart libvirtd")
    if _in_vm() and config.libvirt.virt_type == "kvm":
        return Check("kvm", "WARN", "this host is itself a VM: nested KVM may hang guests at boot",
                     'if guests stall, set [libvirt] virt_type = "qemu"')
    return Check("kvm", "OK", f"/dev/kvm usable; virt_type = {config.libvirt.virt_type}")


def check_tool(name: str, argv: list[str], package: str, required: bool = True) -> Check:
    if shutil.which(argv[0]) is None:
        return Check(name, "FAIL" if required else "WARN", f"{argv[0]} not found", f"apt-get install {package}")
    out = _run(argv)
    text = (out.stdout or out.stderr).strip().splitlines()
    first = text[0] if text else ""
    if out.returncode != 0:
        return Check(name, "FAIL" if required else "WARN", f"{' '.join(argv)} failed: {first}",
                     f"check the {package} installation")
    return Check(name, "OK", first or f"{' '.join(argv)} works")


def probe_link_kinds() -> dict[str, str | None]:
    """Create each link kind in a scratch network namespace; kind -> None (works) or the error."""
    from pyroute2 import NetNS, netns

    name = f"hvd-doctor-{uuid.uuid4().hex[:8]}"
    results: dict[str, str | None] = {}
    ns = NetNS(name)
    try:
        def attempt(kind: str, fn: Callable[[], object]) -> None:
            try:
                fn()
                results[kind] = None
            except Exception as exc:  # any netlink refusal is the answer we are looking for
                results[kind] = str(exc)

        attempt("bridge", lambda: ns.link("add", ifname="doc-br", kind="bridge"))
        attempt("veth", lambda: ns.link("add", ifname="doc-v0", kind="veth", peer="doc-v1"))
        attempt("vxlan", lambda: ns.link("add", ifname="doc-vx", kind="vxlan", vxlan_id=4242, vxlan_port=4789))
        parent = ns.link_lookup(ifname="doc-v0")
        if parent:
            attempt("vlan", lambda: ns.link("add", ifname="doc-v0.42", kind="vlan", link=parent[0], vlan_id=42))
        else:
            results["vlan"] = "no veth parent to test on"
    finally:
        ns.close()
        netns.remove(name)
    return results


def check_links() -> list[Check]:
    try:
        results = probe_link_kinds()
    except Exception as exc:  # no netns support at all: report it rather than crash the doctor
        return [Check("netns", "FAIL", f"cannot create a network namespace: {exc}", "run as root")]
    fixes = {
        "vlan": "load the 8021q module (modprobe 8021q); until then vlan networks are refused",
        "vxlan": "load the vxlan module; until then vxlan networks are refused",
        "bridge": "load the bridge module",
        "veth": "load the veth module",
    }
    checks = []
    for kind in ("bridge", "veth", "vxlan", "vlan"):
        err = results.get(kind)
        if err is None:
            checks.append(Check(f"link {kind}", "OK", "supported by the kernel"))
        else:
            # bridges and veths are needed for any network; vlan/vxlan only for those types
            status: Status = "FAIL" if kind in ("bridge", "veth") else "WARN"
            what = "kernel lacks 802.1Q VLAN links" if kind == "vlan" else f"kernel refuses {kind} links"
            checks.append(Check(f"link {kind}", status, f"{what} ({err})", fixes[kind]))
    return checks


def check_disk(config: Config) -> Check:
    path = Path(config.host.instances_path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gib = shutil.disk_usage(probe).free / 2**30
    if free_gib < 1:
        return Check("disk", "FAIL", f"{free_gib:.1f} GiB free at {probe}", "free space or move instances_path")
    if free_gib < 10:
        return Check("disk", "WARN", f"only {free_gib:.1f} GiB free at {probe}", "free space for instance disks")
    return Check("disk", "OK", f"{free_gib:.0f} GiB free at {probe} (instances_path {path})")


def check_instances_path(config: Config) -> Check:
    """QEMU (libvirt's user) must be able to search every directory down to instances_path."""
    from hvd.drivers.libvirt.access import instances_path_problem, qemu_identity

    path = Path(config.host.instances_path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # a missing instances_path is created 0755 at start-up: check what exists
    who = qemu_identity()
    if who is None:
        return Check("instances_path", "WARN", f"no QEMU user on this host: {path} not checked",
                     "install libvirt-daemon-driver-qemu")
    problem = instances_path_problem(probe, who)
    if problem is not None:
        return Check("instances_path", "FAIL", problem.split(". Fix: ")[0], problem.split(". Fix: ")[-1])
    return Check("instances_path", "OK", f"{path} is reachable by {who.name}")


def check_qemu_x509(config: Config, qemu_conf: Path | None = None) -> Check:
    """NBD exports of volumes: with [tls], libvirt's NBD clients must read the directory hvd writes
    the cluster certificates to, and QEMU must reach it; without, say what is exposed."""
    from hvd.cluster import qemu_tls
    from hvd.drivers.libvirt.access import first_unsearchable, qemu_identity
    from hvd.storage.volumes.nbd import NBD_PORTS

    if not config.tls.enabled:
        if not config.cluster.peers:
            return Check("nbd tls", "OK", "one host: no volume is exported to another")
        return Check("nbd tls", "WARN", f"without [tls], volumes used by other hosts are exported as plain NBD on"
                     f" ports {NBD_PORTS.start}-{NBD_PORTS.stop - 1}: anyone reaching this host's cluster address"
                     " can read and write them", "enable [tls] (hvd cluster init/join), or firewall those ports to"
                     " the cluster's hosts")
    directory = qemu_tls.qemu_x509_dir(config)
    if config.compute.driver != "libvirt":
        return Check("nbd tls", "OK", f"{directory} (fake driver: no libvirt reads it)")
    conf = qemu_conf or qemu_tls.QEMU_CONF
    try:
        text = conf.read_text()
    except OSError as exc:
        return Check("nbd tls", "WARN", f"cannot read {conf}: {exc}", "install libvirt-daemon-driver-qemu")
    problems = [qemu_tls.conf_problem(text, str(directory), "nbd")]
    if config.libvirt.migration_tls:
        problems.append(qemu_tls.conf_problem(text, str(directory), "migrate"))
    for problem in filter(None, problems):
        return Check("nbd tls", "WARN", problem.split(": set ")[0], "set " + problem.split(": set ", 1)[-1])
    who = qemu_identity()
    if who is not None and directory.exists():
        blocker = first_unsearchable(directory, who, _owner_of)
        if blocker is not None:
            return Check("nbd tls", "FAIL", f"{blocker} is not searchable by {who.name}: guests cannot open volumes"
                         " of other hosts", f"chmod o+x {blocker} (or choose another [tls] qemu_x509_dir)")
    return Check("nbd tls", "OK", f"libvirt's NBD clients read {directory} (written by hvd at start-up)")


def _owner_of(path: Path) -> Owner:
    from hvd.drivers.libvirt.access import Owner

    st = path.stat()
    return Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def check_tls(config: Config) -> list[Check]:
    """[tls] files: present, parseable, from the cluster CA, valid now, naming this node, covering
    its peer URL host and listen address, matching the key (hvd/cluster/tls_check.py)."""
    import datetime as dt

    from hvd.cluster import tls_check

    return [Check("tls", f.status, f.detail, f.fix) for f in tls_check.findings(config, dt.datetime.now(dt.UTC))]


def check_novnc(config: Config) -> Check:
    """noVNC's files for the browser console page (optional: any noVNC client works with the URL)."""
    directory = config.compute.novnc_dir
    if not directory:
        return Check("novnc", "OK", "off ([compute] novnc_dir is empty): VNC consoles answer no web_url")
    if not (Path(directory) / novnc.PAGE).is_file():
        return Check("novnc", "WARN", f"{directory} has no {novnc.PAGE}: VNC consoles answer no web_url",
                     "apt-get install novnc, or set [compute] novnc_dir")
    return Check("novnc", "OK", f"serving {directory} at {novnc.PREFIX}/ (browser console pages)")


def run_checks(config: Config) -> list[Check]:
    checks = [Check("config", "OK", "valid")]
    checks.append(check_libvirt(config))
    checks.append(check_kvm(config))
    checks.append(check_tool("qemu-img", ["qemu-img", "--version"], "qemu-utils"))
    checks.append(check_tool("dnsmasq", ["dnsmasq", "--version"], "dnsmasq-base"))
    checks.append(check_tool("nft", ["nft", "list", "tables"], "nftables"))
    checks.append(check_tool("config drive", ["mkfs.vfat", "--help"], "dosfstools"))
    # volumes of this host for servers on other hosts (NBD exports); a host alone needs none
    checks.append(check_tool("nbd exports", ["qemu-storage-daemon", "--version"], "qemu-system-common", required=False))
    if os.geteuid() == 0:
        checks.extend(check_links())
    else:
        checks.append(Check("links", "WARN", "not root: kernel link kinds not probed", "run hvd doctor as root"))
    checks.append(check_disk(config))
    checks.append(check_instances_path(config))
    checks.extend(check_tls(config))
    checks.append(check_qemu_x509(config))
    checks.append(check_novnc(config))
    return checks


def main(config: Config) -> int:
    """Print the table; exit status 1 when any check FAILs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    checks = run_checks(config)
    table = Table(title="hvd doctor")
    for col in ("check", "status", "detail", "how to fix"):
        table.add_column(col)
    colours = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
    for c in checks:
        table.add_row(escape(c.name), f"[{colours[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    Console(width=160).print(table)
    return 1 if any(c.status == "FAIL" for c in checks) else 0
