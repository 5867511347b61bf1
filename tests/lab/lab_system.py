"""The multi-host lab's thin adapters to this machine: commands, processes, cgroups, the lock
between concurrent labs, owner pid files, stale-lab cleanup, leftovers and the guard route.

Every process of lab host ``hvdl<L>-hK`` lives in the cgroup v2 group of that name (it joins
before exec, so forks and daemons stay in it): teardown kills exactly those PIDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.lab.lab_plan import GUARD_CIDR, LOCK_PATH, PREFIX, STATE_ROOT, lab_dir, lab_name

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def clean_env() -> dict[str, str]:
    """This environment without proxy settings (a proxy would carry lab traffic off the machine)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def http_session() -> requests.Session:
    """A requests session that never uses a proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (PID 1 may reap it late here)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def pid_start_time(pid: int) -> str:
    """The start time of `pid` in clock ticks since boot ('' if gone): a PID plus this names one process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()[19]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return ""


def wait_gone(pids: Sequence[int], timeout: float = 10) -> list[int]:
    """Wait until none of `pids` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def cgroup_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /unified in hybrid mode)."""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return Path(left.split()[4])
    raise RuntimeError("no cgroup2 hierarchy is mounted: the lab tracks each host's processes in one")


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def kill_cgroup(cgroup: Path, timeout: float = 15) -> None:
    """SIGKILL every process of `cgroup` by PID (again, for those forked meanwhile), then remove it."""
    deadline = time.monotonic() + timeout
    while cgroup.exists():
        live = [p for p in cgroup_pids(cgroup) if pid_alive(p)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not live:
            try:
                cgroup.rmdir()
                return
            except OSError:
                pass  # zombies still listed: their parent reaps them shortly
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {live} of {cgroup} survive SIGKILL")
        time.sleep(0.05)


def in_cgroup(cgroup: Path, argv: Sequence[str]) -> list[str]:
    """`argv` started inside `cgroup` (it joins before exec, so all its descendants are there too)."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]


def netns_names() -> set[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", "dev", name, check=False).returncode == 0


def lab_mounts(index: int) -> list[str]:
    """Mount points in the root namespace that belong to lab `index` (there should be none but netns)."""
    marks = (str(lab_dir(index)) + "/", f"/run/netns/{lab_name(index)}-")
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if any(line.split()[4].startswith(m) for m in marks)]


@contextlib.contextmanager
def labs_lock() -> Iterator[None]:
    """Serialises lab number choice, stale cleanup and the guard route between processes."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Owner:
    """The process that owns a lab; the lab is stale once it is gone."""

    pid: int
    start_time: str
    cli: bool

    def alive(self) -> bool:
        return pid_alive(self.pid) and pid_start_time(self.pid) == self.start_time


def read_owner(index: int) -> Owner | None:
    try:
        data = json.loads((lab_dir(index) / "owner.json").read_text())
        return Owner(int(data["pid"]), str(data["start_time"]), bool(data.get("cli", False)))
    except (OSError, ValueError, KeyError):
        return None


def labs_present() -> set[int]:
    """Numbers of labs that have anything on this machine (directory, namespace, link or cgroup)."""
    found: set[int] = set()

    def number(name: str) -> int | None:
        rest = name[len(PREFIX):].split("-", 1)[0]
        return int(rest) if name.startswith(PREFIX) and rest.isdigit() else None

    names = [p.name for p in STATE_ROOT.glob(f"{PREFIX}*") if p.is_dir()]
    names += list(netns_names())
    names += [line.split(":")[1].strip().split("@")[0]
              for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines()]
    with contextlib.suppress(RuntimeError):
        names += [p.name for p in cgroup_root().glob(f"{PREFIX}*")]
    for name in names:
        if (n := number(name)) is not None:
            found.add(n)
    return found


def live_labs() -> dict[int, Owner]:
    out: dict[int, Owner] = {}
    for index in labs_present():
        owner = read_owner(index)
        if owner is not None and owner.alive():
            out[index] = owner
    return out


def destroy_lab(index: int) -> None:
    """Remove everything of lab `index`: processes (by PID, through its cgroups), namespaces,
    the root veth, cgroups and the state directory. Idempotent; used by stop() and for stale labs.
    Every step is tried; RuntimeError afterwards names what could not be removed."""
    name = lab_name(index)
    errors: list[str] = []
    try:
        cgroups = sorted(cgroup_root().glob(f"{name}-*"))
    except RuntimeError:
        cgroups = []
    for cgroup in cgroups:
        try:
            kill_cgroup(cgroup)
        except RuntimeError as exc:
            errors.append(str(exc))
    if link_exists(f"{name}-rt") and (r := run("ip", "link", "del", f"{name}-rt", check=False)).returncode:
        errors.append(f"link {name}-rt: {r.stderr.strip()}")
    for ns in sorted(netns_names()):
        if ns.startswith(f"{name}-") and (r := run("ip", "netns", "del", ns, check=False)).returncode:
            errors.append(f"netns {ns}: {r.stderr.strip()}")
    shutil.rmtree(lab_dir(index), ignore_errors=True)
    if errors:
        raise RuntimeError(f"lab {name} not fully removed: " + "; ".join(errors))


def leftovers(index: int) -> list[str]:
    """What lab `index` left on this machine (empty after a clean teardown)."""
    name = lab_name(index)
    found = [f"netns {ns}" for ns in sorted(netns_names()) if ns.startswith(f"{name}-")]
    if link_exists(f"{name}-rt"):
        found.append(f"link {name}-rt")
    with contextlib.suppress(RuntimeError):
        found += [f"cgroup {p}" for p in cgroup_root().glob(f"{name}-*")]
    found += [f"mount {m}" for m in lab_mounts(index)]
    if lab_dir(index).exists():
        found.append(f"dir {lab_dir(index)}")
    return found


def guard_route_present() -> bool:
    return "unreachable" in run("ip", "route", "show", GUARD_CIDR, check=False).stdout


def ensure_guard_route() -> None:
    """The `unreachable` route for the whole lab range in the root namespace (call under the lock)."""
    existing = run("ip", "route", "show", GUARD_CIDR).stdout
    if "unreachable" in existing:
        return
    if existing.strip():
        raise RuntimeError(f"the root namespace already routes {GUARD_CIDR}: {existing.strip()}")
    run("ip", "route", "add", "unreachable", GUARD_CIDR)


def clean_stale_labs() -> list[int]:
    """Destroy labs whose owner process is gone (a killed run); returns their numbers. Call under the lock."""
    stale = [i for i in sorted(labs_present()) if not ((o := read_owner(i)) is not None and o.alive())]
    for index in stale:
        destroy_lab(index)
    return stale


def drop_guard_if_unused() -> None:
    """Remove the guard route when no lab is left (call under the lock)."""
    if not labs_present() and guard_route_present():
        run("ip", "route", "del", "unreachable", GUARD_CIDR, check=False)


def lab_available() -> str:
    """'' if this machine can run the lab, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "the multi-host lab needs root (namespaces, bind mounts, cgroups)"
    for tool in ("ip", "unshare", "nsenter", "libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"the multi-host lab needs {tool} (run scripts/setup.sh)"
    try:
        cgroup_root()
    except RuntimeError as exc:
        return str(exc)
    return ""
