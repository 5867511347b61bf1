"""The multi-host lab: N hvd hosts on this machine, each with its own network, mount and UTS
namespaces, its own virtlogd + libvirtd (listening on TCP for p2p live migration) and its own
hvd daemon, joined by an underlay bridge. Every later multi-host test builds on it.

Use it in a test module::

    from tests.lab.cluster import LabCluster, lab_available

    @pytest.fixture(scope="module")
    def lab() -> Iterator[LabCluster]:
        if reason := lab_available():
            pytest.skip(reason)
        with LabCluster(hosts=3) as cluster:      # started, every daemon up, a leader elected
            yield cluster                         # stopped on exit: nothing is left behind

    def test_x(lab: LabCluster) -> None:
        r = lab.call("h2", "GET", "/v1/cluster")  # admin token, no proxy, explicit lab route
        lab.url("h1")                             # "http://10.214.<lab>.1:8774"
        lab.virsh("h1", "list", "--all")          # that host's own libvirtd, by unix socket
        lab.exec("h3", ["ip", "-o", "addr"])      # inside h3's namespaces
        lab.kill_daemon(lab.leader(), signal.SIGKILL); lab.restart_daemon("h1")

People use `make lab HOSTS=3` / `make lab-down` (this module's CLI: ``up|down|status``).

Layout of lab number L (0-99, the lowest free one; several labs may run side by side):
- Names start with ``hvdl<L>-``: host namespaces ``hvdl<L>-h1``..., the underlay namespace
  ``hvdl<L>-ul`` (bridge ``br0``, one veth per host, MTU 1600 so VXLAN gets 1550), the root
  namespace's veth ``hvdl<L>-rt`` (10.214.L.254) into the underlay, cgroups ``hvdl<L>-h1``...
  (every process of a host lives in its cgroup, so teardown finds them all by PID), and the state
  directory /tmp/hvdl<L> (owner pid file, per-host directories, logs).
- Host k has address 10.214.L.k on ``ul0``: its API, peer URL, VTEP and libvirtd TCP address.
  The root namespace reaches it through ``hvdl<L>-rt`` only: an ``unreachable 10.214.0.0/16``
  guard route exists while any lab runs, so no lab address can leave through the default route.
- Inside a host, /run, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt
  are the host's own directories (bind mounts in a private mount namespace held by a ``sleep``
  process), so qemu:///system is the host's libvirtd; hvd's qdhcp-/qrouter- namespaces are created
  in the host's private /run/netns (see them with ``lab.exec(h, ["ip", "netns"])``) and carry a
  per-host ``netns_prefix`` as well. ``instances_path`` is /var/lib/libvirt/hvd-instances on every
  host (the same path, each host's own directory), as migration with storage copy requires.

Teardown (``stop()``, also run on the next start for labs whose owner process died) kills every
process of the lab's cgroups by PID, deletes its namespaces, links, cgroups and directory, and the
guard route once no other lab runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
PREFIX = "hvdl"
GUARD_CIDR = "10.214.0.0/16"
STATE_ROOT = Path("/tmp")
LOCK_PATH = STATE_ROOT / f"{PREFIX}.lock"
MAX_LABS = 100  # 10.214.L.0/24 per lab; 10.214.128+ is left for addresses tests create
API_PORT = 8774
CLUSTER_KEY_BYTES = 24
MTU = 1600
# in-host path -> directory name under the host's state directory
BIND_MOUNTS = {
    "/run": "run",
    "/var/lib/libvirt": "varlib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
    "/etc/libvirt": "etc",
}
INSTANCES_PATH = "/var/lib/libvirt/hvd-instances"
IMAGES_PATH = "/var/lib/libvirt/images"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# ---------------------------------------------------------------------------------------------
# Pure plan: names and addresses of one lab


def lab_name(index: int) -> str:
    """The prefix of every object of lab `index` (``hvdl<index>``)."""
    return f"{PREFIX}{index}"


def lab_dir(index: int) -> Path:
    return STATE_ROOT / lab_name(index)


def host_name(k: int) -> str:
    """Name (hvd host name, node id, hostname) of the k-th host, 1-based."""
    return f"h{k}"


def host_ip(index: int, k: int) -> str:
    return f"10.214.{index}.{k}"


def root_ip(index: int) -> str:
    """The root namespace's address on the lab's underlay (its veth into it)."""
    return f"10.214.{index}.254"


def spare_cidr(index: int) -> str:
    """A /24 inside the guard range that tests may use for addresses in namespaces they create."""
    return f"10.214.{128 + index}.0/24"


def pick_index(in_use: set[int]) -> int:
    """The lowest lab number not in use; RuntimeError when all are taken."""
    for index in range(MAX_LABS):
        if index not in in_use:
            return index
    raise RuntimeError(f"all {MAX_LABS} lab numbers are in use: run 'python3 -m tests.lab.cluster down'")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """hvd.toml text for `{section: {key: value}}` (flat sections only, as hvd.toml has)."""
    out: list[str] = []
    for section, fields in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{key} = {toml_value(value)}" for key, value in fields.items())
        out.append("")
    return "\n".join(out)


def merge_config(base: Mapping[str, Mapping[str, Any]],
                 overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged = {section: dict(fields) for section, fields in base.items()}
    for section, fields in overrides.items():
        merged.setdefault(section, {}).update(fields)
    return merged


def daemon_config(index: int, k: int, hosts: int, data_dir: Path, admin_password: str, cluster_key: str,
                  overrides: Mapping[str, Mapping[str, Any]] = {}) -> dict[str, dict[str, Any]]:
    """The hvd.toml sections of host k of lab `index` (`overrides` win, section by section)."""
    name = host_name(k)
    peers = [f"{host_name(j)}=http://{host_ip(index, j)}:{API_PORT}" for j in range(1, hosts + 1)]
    base: dict[str, dict[str, Any]] = {
        "host": {"name": name, "data_dir": str(data_dir), "instances_path": INSTANCES_PATH},
        "api": {"listen": host_ip(index, k), "port": API_PORT},
        "libvirt": {"uri": "qemu:///system", "virt_type": "qemu"},
        "identity": {"admin_password": admin_password},
        "compute": {"driver": "libvirt", "reserved_host_memory_mb": 512},
        "network": {"local_ip": host_ip(index, k), "vxlan_underlay": "ul0",
                    "netns_prefix": f"{lab_name(index)}{name}-"},
        "cluster": {"peers": peers, "cluster_key": cluster_key},
    }
    return merge_config(base, overrides)


# ---------------------------------------------------------------------------------------------
# Thin adapters: commands, processes, cgroups


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
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
    out = _run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name, check=False).returncode == 0


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
              for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines()]
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
    the root veth, cgroups and the state directory. Idempotent; used by stop() and for stale labs."""
    name = lab_name(index)
    with contextlib.suppress(RuntimeError):
        for cgroup in sorted(cgroup_root().glob(f"{name}-*")):
            kill_cgroup(cgroup)
    if link_exists(f"{name}-rt"):
        _run("ip", "link", "del", f"{name}-rt", check=False)
    for ns in sorted(netns_names()):
        if ns.startswith(f"{name}-"):
            _run("ip", "netns", "del", ns, check=False)
    shutil.rmtree(lab_dir(index), ignore_errors=True)


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
    return "unreachable" in _run("ip", "route", "show", GUARD_CIDR, check=False).stdout


def ensure_guard_route() -> None:
    """The `unreachable` route for the whole lab range in the root namespace (call under the lock)."""
    existing = _run("ip", "route", "show", GUARD_CIDR).stdout
    if "unreachable" in existing:
        return
    if existing.strip():
        raise RuntimeError(f"the root namespace already routes {GUARD_CIDR}: {existing.strip()}")
    _run("ip", "route", "add", "unreachable", GUARD_CIDR)


def clean_stale_labs() -> list[int]:
    """Destroy labs whose owner process is gone (a killed run); returns their numbers. Call under the lock."""
    stale = [i for i in sorted(labs_present()) if not ((o := read_owner(i)) is not None and o.alive())]
    for index in stale:
        destroy_lab(index)
    return stale


def drop_guard_if_unused() -> None:
    """Remove the guard route when no lab is left (call under the lock)."""
    if not labs_present() and guard_route_present():
        _run("ip", "route", "del", "unreachable", GUARD_CIDR, check=False)


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


# ---------------------------------------------------------------------------------------------
# The lab


@dataclass(frozen=True)
class LabHost:
    """One lab host. `root` holds its private directories; paths inside the host map to them
    (see `path`)."""

    name: str
    k: int
    ip: str
    netns: str
    root: Path
    cgroup: Path
    host_uuid: str

    @property
    def url(self) -> str:
        """The host's hvd API (and peer) URL, reachable from the root namespace."""
        return f"http://{self.ip}:{API_PORT}"

    @property
    def libvirt_uri(self) -> str:
        """This host's libvirtd from the root namespace (its unix socket)."""
        return f"qemu+unix:///system?socket={self.root / 'run/libvirt/libvirt-sock'}"

    @property
    def migration_uri(self) -> str:
        """This host's libvirtd as other lab hosts reach it (p2p migration destination)."""
        return f"qemu+tcp://{self.ip}/system"

    @property
    def data_dir(self) -> Path:
        """hvd's data_dir (the same path inside the host and from the root namespace)."""
        return self.root / "hvd"

    @property
    def config_path(self) -> Path:
        return self.root / "hvd.toml"

    @property
    def log_path(self) -> Path:
        """hvd daemon's stdout/stderr."""
        return self.root / "hvd.log"

    def path(self, inside: str | os.PathLike[str]) -> Path:
        """The root namespace's path of `inside` as the host sees it (e.g. /var/lib/libvirt/images/x)."""
        p = str(inside)
        for mount, local in BIND_MOUNTS.items():
            if p == mount or p.startswith(mount + "/"):
                return self.root / local / p[len(mount):].lstrip("/")
        return Path(p)


@dataclass
class _Daemon:
    proc: subprocess.Popen[bytes]
    log: Any


class LabCluster:
    """N lab hosts with libvirt and hvd; see the module docstring for the layout.

    `hosts`: how many (h1..hN). `config`: hvd.toml overrides for every host,
    ``{"compute": {"sync_power_state_interval_s": 2}}``; `host_config`: per-host overrides by
    host name. `start_daemons=False` brings up namespaces and libvirt only (then call
    `start_daemon()` per host, e.g. with ``{"cluster": {"join": True}}``). `ready_timeout`:
    seconds to wait for libvirtd, the daemons and a common leader. `cli`: owned by `make lab`.

    Attributes once started: `index` (lab number L), `hosts` (name -> LabHost), `admin_password`,
    `cluster_key`, `dir` (state directory), `prefix` (``hvdl<L>-``). Start with `start()` or a
    ``with`` block; `stop()` removes everything.
    """

    def __init__(self, hosts: int = 3, *, config: Mapping[str, Mapping[str, Any]] | None = None,
                 host_config: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
                 start_daemons: bool = True, ready_timeout: float = 90.0, cli: bool = False) -> None:
        if hosts < 1:
            raise ValueError("a lab needs at least one host")
        self.hosts_count = hosts
        self.config = config or {}
        self.host_config = host_config or {}
        self.start_daemons = start_daemons
        self.ready_timeout = ready_timeout
        self.cli = cli
        self.index = -1
        self.hosts: dict[str, LabHost] = {}
        self.admin_password = "lab-" + secrets.token_urlsafe(12)
        self.cluster_key = secrets.token_urlsafe(CLUSTER_KEY_BYTES)
        self._daemons: dict[str, _Daemon] = {}
        self._holders: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._session = http_session()
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> LabCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def dir(self) -> Path:
        return lab_dir(self.index)

    @property
    def prefix(self) -> str:
        """The name prefix of this lab's objects (``hvdl<L>-``)."""
        return f"{lab_name(self.index)}-"

    def start(self) -> LabCluster:
        """Bring up every host (in parallel), then the daemons; returns self once a leader is known.
        On failure everything started so far is removed before the error propagates."""
        with labs_lock():
            clean_stale_labs()
            self.index = pick_index(set(live_labs()))
            ensure_guard_route()
            self.dir.mkdir(mode=0o755)
            me = os.getpid()
            (self.dir / "owner.json").write_text(
                json.dumps({"pid": me, "start_time": pid_start_time(me), "cli": self.cli}))
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self) -> None:
        cg_root = cgroup_root()
        for k in range(1, self.hosts_count + 1):
            name = host_name(k)
            self.hosts[name] = LabHost(
                name=name, k=k, ip=host_ip(self.index, k), netns=f"{self.prefix}{name}",
                root=self.dir / name, cgroup=cg_root / f"{self.prefix}{name}", host_uuid=str(uuid.uuid4()))
        self._underlay()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            list(pool.map(self._start_host, self.hosts.values()))
        if self.start_daemons:
            for host in self.hosts.values():
                self.start_daemon(host.name, wait=False)
            self.wait_ready()
            (self.dir / "openrc").write_text(self.openrc())

    def _underlay(self) -> None:
        ul = f"{self.prefix}ul"
        rt = f"{self.prefix}rt"
        _run("ip", "netns", "add", ul)
        _run("ip", "-n", ul, "link", "set", "lo", "up")
        _run("ip", "-n", ul, "link", "add", "br0", "mtu", str(MTU), "type", "bridge")
        _run("ip", "-n", ul, "link", "set", "br0", "up")
        # the root namespace's only way into the lab: a veth into the underlay, never the default route
        _run("ip", "link", "add", rt, "mtu", str(MTU), "type", "veth", "peer", "name", "rt", "mtu", str(MTU),
             "netns", ul)
        _run("ip", "-n", ul, "link", "set", "rt", "master", "br0", "up")
        _run("ip", "addr", "add", f"{root_ip(self.index)}/24", "dev", rt)
        _run("ip", "link", "set", rt, "up")

    def _start_host(self, host: LabHost) -> None:
        ul = f"{self.prefix}ul"
        _run("ip", "netns", "add", host.netns)
        _run("ip", "-n", host.netns, "link", "set", "lo", "up")
        # both ends at MTU 1600: a veth drops frames longer than its peer's MTU
        _run("ip", "-n", host.netns, "link", "add", "ul0", "mtu", str(MTU), "type", "veth",
             "peer", "name", host.name, "mtu", str(MTU), "netns", ul)
        _run("ip", "-n", ul, "link", "set", host.name, "master", "br0", "up")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "ul0")
        _run("ip", "-n", host.netns, "link", "set", "ul0", "up")
        self._prepare_dirs(host)
        host.cgroup.mkdir()
        binds = " ".join(f"mount --bind {host.root / local} {mount};" for mount, local in BIND_MOUNTS.items())
        # Drop the copies of /run/netns mounts first: they would pin other labs' namespaces.
        script = (
            "set -e; umount -R -l /run/netns 2>/dev/null || true; "
            f"{binds} hostname {host.name}; virtlogd -d; libvirtd -d -l; "
            f"echo $$ > {host.root / 'holder.pid'}; exec sleep infinity"
        )
        with open(host.root / "holder.log", "ab") as log:
            self._holders[host.name] = subprocess.Popen(
                in_cgroup(host.cgroup, ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
                                        "--propagation", "private", "sh", "-c", script]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env())
        self._wait_libvirtd(host)

    def _prepare_dirs(self, host: LabHost) -> None:
        host.root.mkdir(mode=0o755)
        for local in BIND_MOUNTS.values():
            (host.root / local).mkdir(mode=0o755)
        shutil.copytree("/etc/libvirt", host.path("/etc/libvirt"), dirs_exist_ok=True, symlinks=True)
        etc = host.path("/etc/libvirt")
        # the main libvirtd's domains, networks and pools are not this host's
        for pattern in ("qemu/*.xml", "qemu/autostart/*", "qemu/networks/autostart/*", "storage/*.xml",
                        "storage/autostart/*"):
            for f in etc.glob(pattern):
                f.unlink()
        with open(etc / "libvirtd.conf", "a") as fh:
            fh.write(f'\n# hvd lab host {host.name}\nhost_uuid = "{host.host_uuid}"\nlisten_tcp = 1\n'
                     f'listen_tls = 0\nlisten_addr = "{host.ip}"\nauth_tcp = "none"\n'
                     'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n')
        with open(etc / "qemu.conf", "a") as fh:
            fh.write(f'\n# hvd lab host {host.name}\nmigration_host = "{host.ip}"\n'
                     f'migration_address = "{host.ip}"\ncgroup_controllers = [ ]\n')
        (etc / "storage" / "autostart").mkdir(parents=True, exist_ok=True)
        (etc / "storage" / "default.xml").write_text(
            f"<pool type='dir'><name>default</name><uuid>{uuid.uuid4()}</uuid>"
            f"<target><path>{IMAGES_PATH}</path></target></pool>\n")
        (etc / "storage" / "autostart" / "default.xml").symlink_to("../default.xml")
        # the same skeleton (owners, modes) as the real directories
        for top in ("/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"):
            for dirpath, dirnames, _ in os.walk(top):
                dirnames[:] = [d for d in dirnames if not d.startswith("domain-")]
                st = os.stat(dirpath)
                target = host.path(dirpath)
                target.mkdir(exist_ok=True)
                os.chown(target, st.st_uid, st.st_gid)
                target.chmod(st.st_mode & 0o7777)
        host.path(IMAGES_PATH).mkdir(exist_ok=True)
        host.path(INSTANCES_PATH).mkdir(mode=0o755, exist_ok=True)
        # a seeded capabilities cache spares each libvirtd a QEMU probe of several seconds
        caps = Path("/var/cache/libvirt/qemu/capabilities")
        if caps.is_dir():
            shutil.copytree(caps, host.path(caps), dirs_exist_ok=True)
        host.data_dir.mkdir(mode=0o755)

    def _wait_libvirtd(self, host: LabHost) -> None:
        sock = host.path("/run/libvirt/libvirt-sock")
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            holder = self._holders[host.name]
            if holder.poll() is not None:
                raise RuntimeError(f"host {host.name} did not start: {self._tail(host.root / 'holder.log')}")
            if sock.exists() and self.virsh(host.name, "version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"libvirtd of {host.name} did not answer within {self.ready_timeout}s: "
                           f"{self._tail(host.path('/var/log/libvirt/libvirtd.log'))}")

    @staticmethod
    def _tail(path: Path, chars: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"({path} unreadable)"

    def stop(self) -> None:
        """Remove the whole lab: every process by PID, namespaces, links, cgroups, directory.
        Idempotent."""
        if self._stopped or self.index < 0:
            return
        self._stopped = True
        for daemon in self._daemons.values():
            if daemon.proc.poll() is None:
                daemon.proc.kill()
        for proc in [*(d.proc for d in self._daemons.values()), *self._holders.values()]:
            if proc.poll() is None:
                proc.kill()
        with labs_lock():
            destroy_lab(self.index)
            for proc in [*(d.proc for d in self._daemons.values()), *self._holders.values()]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            for daemon in self._daemons.values():
                daemon.log.close()
            drop_guard_if_unused()
        self._session.close()

    # -- daemons ------------------------------------------------------------------------------

    def host(self, host: str | int) -> LabHost:
        """A host by name ("h2") or number (2)."""
        name = host_name(host) if isinstance(host, int) else host
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no lab host {name!r}; hosts are {sorted(self.hosts)}") from None

    def holder_pid(self, host: str | int) -> int:
        return self._holders[self.host(host).name].pid

    def nsenter(self, host: str | int, argv: Sequence[str]) -> list[str]:
        """`argv` inside the host's network, mount and UTS namespaces and its cgroup."""
        h = self.host(host)
        return in_cgroup(h.cgroup, ["nsenter", "-t", str(self.holder_pid(h.name)), "-n", "-m", "-u", "--", *argv])

    def exec(self, host: str | int, argv: Sequence[str], *, check: bool = False, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the host (namespaces as its daemons see them); captured text output."""
        return subprocess.run(self.nsenter(host, argv), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, env=clean_env())

    def write_config(self, host: str | int, overrides: Mapping[str, Mapping[str, Any]] = {}) -> Path:
        """Write the host's hvd.toml (lab overrides, per-host overrides, then `overrides`)."""
        h = self.host(host)
        merged = merge_config(self.config, self.host_config.get(h.name, {}))
        merged = merge_config(merged, overrides)
        cfg = daemon_config(self.index, h.k, len(self.hosts), h.data_dir, self.admin_password, self.cluster_key,
                            merged)
        h.config_path.write_text(render_toml(cfg))
        return h.config_path

    def start_daemon(self, host: str | int, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     wait: bool = True) -> int:
        """Start the host's hvd daemon (config rewritten when `overrides` is given); returns its PID.
        `wait`: until its API answers /healthz with a leader."""
        h = self.host(host)
        if (old := self._daemons.get(h.name)) is not None and old.proc.poll() is None:
            raise RuntimeError(f"the hvd daemon of {h.name} runs already (pid {old.proc.pid})")
        if overrides is not None or not h.config_path.exists():
            self.write_config(h.name, overrides or {})
        log = open(h.log_path, "ab")  # noqa: SIM115 - closed at stop()
        proc = subprocess.Popen(self.nsenter(h.name, [sys.executable, "-m", "hvd", "daemon", "-c", str(h.config_path)]),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=clean_env())
        self._daemons[h.name] = _Daemon(proc, log)
        (h.root / "hvd.pid").write_text(f"{proc.pid}\n")
        if wait:
            self.wait_ready([h.name])
        return proc.pid

    def daemon_pid(self, host: str | int) -> int | None:
        """PID of the host's hvd daemon while it runs."""
        d = self._daemons.get(self.host(host).name)
        return d.proc.pid if d is not None and d.proc.poll() is None else None

    def kill_daemon(self, host: str | int, sig: int = signal.SIGKILL, timeout: float = 30) -> int | None:
        """Send `sig` to the host's hvd daemon; for SIGKILL/SIGTERM/SIGINT wait until it has exited
        and return its exit status (None for other signals, e.g. SIGSTOP)."""
        h = self.host(host)
        d = self._daemons.get(h.name)
        if d is None or d.proc.poll() is not None:
            raise RuntimeError(f"the hvd daemon of {h.name} is not running")
        d.proc.send_signal(sig)
        if sig not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return None
        try:
            return d.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            return d.proc.wait(10)

    def restart_daemon(self, host: str | int, sig: int = signal.SIGTERM,
                       overrides: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Stop the host's daemon with `sig` (if it runs), start it again and wait for its API."""
        if self.daemon_pid(host) is not None:
            self.kill_daemon(host, sig)
        return self.start_daemon(host, overrides)

    def daemon_log(self, host: str | int) -> str:
        return self._tail(self.host(host).log_path, 1 << 30)

    # -- API ----------------------------------------------------------------------------------

    def url(self, host: str | int) -> str:
        """The host's API base URL (http://10.214.L.k:8774)."""
        return self.host(host).url

    @property
    def urls(self) -> dict[str, str]:
        return {name: h.url for name, h in self.hosts.items()}

    def health(self, host: str | int) -> dict[str, Any] | None:
        """The host's /healthz body, or None while it does not answer 200."""
        try:
            r = self._session.get(self.url(host) + "/healthz", timeout=2)
        except requests.RequestException:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_ready(self, hosts: Sequence[str] | None = None, timeout: float | None = None) -> str:
        """Wait until the running daemons among `hosts` (default: all) answer /healthz and name the
        same leader; returns the leader's name."""
        names = list(hosts) if hosts is not None else [n for n in self.hosts if self.daemon_pid(n)]
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            for name in names:
                d = self._daemons.get(name)
                if d is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"hvd daemon of {name} exited ({d.proc.returncode}):\n"
                                       f"{self.daemon_log(name)[-3000:]}")
            leaders = {(self.health(n) or {}).get("leader") for n in names}
            if len(leaders) == 1 and (leader := leaders.pop()) in self.hosts:
                return str(leader)
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.daemon_log(n)[-2000:]}" for n in names)
                raise RuntimeError(f"no common leader among {names} within the timeout:\n{logs}")
            time.sleep(0.2)

    def leader(self) -> str:
        """The leader's name as the running daemons see it (waits for agreement)."""
        return self.wait_ready(timeout=30)

    def token(self, refresh: bool = False) -> str:
        """An admin token (valid on every host: tokens live in the replicated catalog)."""
        if self._token is None or refresh:
            creds = {"username": "admin", "password": self.admin_password, "project": "admin"}
            for name in self.hosts:
                if self.daemon_pid(name) is None:
                    continue
                r = self._session.post(self.url(name) + "/v1/auth/tokens", json=creds, timeout=30)
                if r.status_code == 201:
                    self._token = str(r.json()["token"])
                    break
            else:
                raise RuntimeError("no running lab daemon issued an admin token")
        assert self._token is not None
        return self._token

    def call(self, host: str | int, method: str, path: str, json: Any = None, *, token: str | None = None,
             timeout: float = 60, **kw: Any) -> requests.Response:
        """An HTTP request to the host's API as admin (or with `token`); never raises on HTTP errors."""
        headers = dict(kw.pop("headers", {}))
        headers.setdefault("Authorization", f"Bearer {token or self.token()}")
        r = self._session.request(method, self.url(host) + path, json=json, headers=headers, timeout=timeout, **kw)
        if r.status_code == 401 and token is None:
            headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
            r = self._session.request(method, self.url(host) + path, json=json, headers=headers, timeout=timeout,
                                      **kw)
        return r

    def openrc(self, host: str | int = 1) -> str:
        """Shell exports for the hvd CLI against `host` as admin (also in <dir>/openrc)."""
        others = " ".join(f"{n}={h.url}" for n, h in self.hosts.items())
        return (f"export HVD_URL={self.url(host)}\nexport HVD_USERNAME=admin\n"
                f"export HVD_PASSWORD={self.admin_password}\nexport HVD_PROJECT=admin\n"
                f"# lab {lab_name(self.index)} hosts: {others}\n")

    # -- libvirt ------------------------------------------------------------------------------

    def virsh(self, host: str | int, *args: str, check: bool = True, timeout: float = 120
              ) -> subprocess.CompletedProcess[str]:
        """`virsh` against the host's own libvirtd (its unix socket, from the root namespace)."""
        argv = ["virsh", "-q", "-c", self.host(host).libvirt_uri, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=clean_env())
        if check and result.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)} on {host} failed: {result.stderr.strip()}")
        return result

    def pids(self) -> dict[str, list[int]]:
        """Live PIDs of each host's processes (holder, libvirtd, QEMU, hvd, dnsmasq...)."""
        return {n: [p for p in cgroup_pids(h.cgroup) if pid_alive(p)] for n, h in self.hosts.items()}


# ---------------------------------------------------------------------------------------------
# CLI: make lab / make lab-down


def _serve(hosts: int) -> int:
    """Run a lab in this process until SIGTERM/SIGINT (the `make lab` owner)."""
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lab = LabCluster(hosts, cli=True, ready_timeout=180).start()
    except Exception as exc:
        print(f"FAILED {exc}", flush=True)
        return 1
    print(f"READY {lab.index}", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        lab.stop()
    return 0


def _up(hosts: int) -> int:
    log = STATE_ROOT / f"{PREFIX}-cli-{os.getpid()}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.lab.cluster", "serve", "--hosts", str(hosts)],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not line.startswith("READY"):
        print(f"lab did not start: {line or log.read_text()[-3000:]}", file=sys.stderr)
        log.unlink(missing_ok=True)
        return 1
    log.unlink(missing_ok=True)
    index = int(line.split()[1])
    print(f"# lab {lab_name(index)}: {hosts} hosts, owner pid {proc.pid}, state in {lab_dir(index)}")
    print("# stop it with: make lab-down")
    print((lab_dir(index) / "openrc").read_text(), end="")
    return 0


def _down() -> int:
    with labs_lock():
        owners = live_labs()
    code = 0
    for index, owner in sorted(owners.items()):
        if not owner.cli:
            print(f"lab {lab_name(index)} belongs to process {owner.pid} (a test run): left alone")
            continue
        os.kill(owner.pid, signal.SIGTERM)
        if wait_gone([owner.pid], 60):
            print(f"lab {lab_name(index)}: owner {owner.pid} did not stop; removing the lab itself")
            os.kill(owner.pid, signal.SIGKILL)
            code = 1
        print(f"lab {lab_name(index)} removed")
    with labs_lock():
        for index in clean_stale_labs():
            print(f"stale lab {lab_name(index)} removed")
        drop_guard_if_unused()
    return code


def _status() -> int:
    present = labs_present()
    if not present:
        print("no lab")
    for index in sorted(present):
        owner = read_owner(index)
        state = "running" if owner is not None and owner.alive() else "stale (run make lab-down)"
        who = f"owner {owner.pid}{' (make lab)' if owner.cli else ''}" if owner else "no owner"
        print(f"{lab_name(index)}: {state}, {who}, {lab_dir(index)}")
        session = http_session()
        for cfg in sorted(lab_dir(index).glob("h*/hvd.toml")):
            url = f"http://{host_ip(index, int(cfg.parent.name[1:]))}:{API_PORT}"
            try:
                health = session.get(url + "/healthz", timeout=2).json()
                print(f"  {cfg.parent.name} {url} leader={health.get('leader')}")
            except (requests.RequestException, ValueError):
                print(f"  {cfg.parent.name} {url} not answering")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.lab.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command in ("up", "serve") and (reason := lab_available()):
        print(reason, file=sys.stderr)
        return 1
    if args.command == "up":
        return _up(args.hosts)
    if args.command == "serve":
        return _serve(args.hosts)
    if args.command == "down":
        return _down()
    return _status()


if __name__ == "__main__":
    sys.exit(main())
