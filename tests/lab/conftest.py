"""Lab fixtures: network namespaces, guard routes, and teardown that survives failures.

Safety rules (shared/lab-notes.md): lab addresses live only inside namespaces created here;
the root namespace gets an `unreachable` route for the lab range before any lab traffic, so
nothing can leave through its default route; every object is named `hvdt-...` and deleted
at teardown; processes are stopped by PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB_CIDR = "10.213.0.0/16"
_counter = itertools.count()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def _netns_list() -> set[str]:
    out = _run("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def lab_guard() -> Iterator[str]:
    """An `unreachable` route for the lab range in the root namespace (added if absent)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("lab network tests need root and iproute2")
    ipaddress.ip_network(LAB_CIDR)
    existing = _run("ip", "route", "show", LAB_CIDR).stdout
    added = False
    if "unreachable" not in existing:
        if existing.strip():
            pytest.fail(f"root namespace already routes {LAB_CIDR}: {existing.strip()}")
        result = _run("ip", "route", "add", "unreachable", LAB_CIDR, check=False)
        # A concurrent session may have just added the same guard: then it is not ours to remove.
        added = result.returncode == 0
        if not added and "unreachable" not in _run("ip", "route", "show", LAB_CIDR).stdout:
            pytest.fail(f"could not add the guard route for {LAB_CIDR}: {result.stderr.strip()}")
    try:
        yield LAB_CIDR
    finally:
        if added:
            _run("ip", "route", "del", "unreachable", LAB_CIDR, check=False)


class Lab:
    """Namespaces and a DHCP directory for one test; `prefix` names everything it makes."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.prefix = prefix
        self.workdir = workdir
        self.namespaces: list[str] = []

    def netns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        _run("ip", "netns", "add", full)
        self.namespaces.append(full)
        _run("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def exec(self, ns: str, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True, timeout=timeout
        )

    def ping(self, ns: str, address: str, attempts: int = 3) -> bool:
        """True once an echo reply comes back; retried because the lab machine may be busy."""
        for _ in range(attempts):
            if self.exec(ns, "busybox", "ping", "-c", "1", "-W", "2", address).returncode == 0:
                return True
        return False

    def blocked(self, ns: str, address: str) -> bool:
        """True if two echo requests a second apart both go unanswered."""
        return self.exec(ns, "busybox", "ping", "-c", "2", "-W", "1", address).returncode != 0

    def guest(self, host_ns: str, tap: str, mac: str, name: str) -> str:
        """A namespace standing in for a VM: `eth0` in it, its veth peer `tap` in `host_ns`
        (as libvirt would create a VM's tap); the host plan plugs the tap into the bridge."""
        ns = self.netns(name)
        _run("ip", "-n", host_ns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
        return ns

    def dhcp_client(self, ns: str) -> subprocess.CompletedProcess[str]:
        """One busybox udhcpc run in `ns` that configures eth0 with the lease."""
        script = self.workdir / "udhcpc.script"
        if not script.exists():
            script.write_text(
                "#!/bin/sh\n"
                'case "$1" in\n'
                "  bound|renew)\n"
                '    ip addr flush dev "$interface"\n'
                '    ip addr add "$ip/$mask" dev "$interface"\n'
                '    if [ -n "$router" ]; then ip route replace default via "${router%% *}"; fi\n'
                "    ;;\n"
                "esac\n"
            )
            script.chmod(0o755)
        return self.exec(ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "1", "-s", str(script))

    def cleanup(self) -> None:
        _stop_dnsmasqs(self.workdir)
        for ns in sorted(_netns_list()):
            if ns.startswith(self.prefix):
                _run("ip", "netns", "del", ns, check=False)


def _stop_dnsmasqs(root: Path) -> None:
    """Stop dnsmasq processes whose pid files live under `root` (ours), by PID."""
    for pidfile in root.rglob("pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"--pid-file={pidfile}".encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def lab(lab_guard: str) -> Iterator[Lab]:
    prefix = f"hvdt-{os.getpid() % 100000}-{next(_counter)}-"
    # dnsmasq re-reads its hosts file after dropping privileges: the directory must be searchable.
    workdir = Path(tempfile.mkdtemp(prefix="hvdt-"))
    workdir.chmod(0o755)
    instance = Lab(prefix, workdir)
    try:
        yield instance
    finally:
        instance.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
