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
        lab.url("h1")                             # "https://10.214.<lab>.1:8774"
        lab.virsh("h1", "list", "--all")          # that host's own libvirtd, by unix socket
        lab.exec("h3", ["ip", "-o", "addr"])      # inside h3's namespaces
        lab.kill_daemon(lab.leader(), signal.SIGKILL); lab.restart_daemon("h1")
        lab.isolate("h2"); lab.rejoin("h2")        # a partition: h2 off the underlay and back

People use `make lab HOSTS=3` / `make lab-down` / `make lab-status` (tests/lab/lab_cli.py).

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

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from hvd.cluster.tls import TlsFiles, create_ca, issue_host
from tests.lab.lab_plan import (
    API_PORT,
    BIND_MOUNTS,
    CLUSTER_KEY_BYTES,
    IMAGES_PATH,
    INSTANCES_PATH,
    MAX_HOSTS,
    MTU,
    QEMU_X509_DIR,
    daemon_config,
    host_ip,
    host_name,
    lab_dir,
    lab_name,
    libvirtd_conf,
    merge_config,
    pick_index,
    qemu_conf,
    render_toml,
    root_ip,
    spare_cidr,
)
from tests.lab.lab_system import (
    cgroup_pids,
    cgroup_root,
    clean_env,
    clean_stale_labs,
    destroy_lab,
    drop_guard_if_unused,
    ensure_guard_route,
    http_session,
    in_cgroup,
    lab_available,
    labs_lock,
    leftovers,
    live_labs,
    netns_names,
    pid_alive,
    pid_start_time,
    run,
    wait_gone,
)

__all__ = ["INSTANCES_PATH", "LabCluster", "LabHost", "cgroup_pids", "cgroup_root", "clean_stale_labs",
           "lab_available", "lab_name", "labs_lock", "leftovers", "netns_names", "pid_alive", "spare_cidr",
           "wait_gone"]

REPO = Path(__file__).resolve().parents[2]

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
        return f"https://{self.ip}:{API_PORT}"

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


def _not_host_config(directory: str, names: list[str]) -> set[str]:
    """copytree filter for /etc/libvirt: leave out the main libvirtd's own objects (the files
    that its running daemon may also be writing meanwhile)."""
    rel = os.path.relpath(directory, "/etc/libvirt")
    if rel in ("storage", "secrets", "qemu/autostart", "qemu/networks/autostart"):
        return set(names)
    if rel == "qemu":
        return {n for n in names if n.endswith(".xml") or n == "autostart"}
    return set()


@dataclass
class _Daemon:
    proc: subprocess.Popen[bytes]
    log: Any


class LabCluster:
    """N lab hosts with libvirt and hvd; see the module docstring for the layout.

    `hosts`: how many (h1..hN). `config`: hvd.toml overrides for every host,
    ``{"compute": {"sync_power_state_interval_s": 2}}``; `host_config`: per-host overrides by
    host name. `start_daemons=False` brings up namespaces and libvirt only (then call
    `start_all_daemons()`, or `start_daemon()` per host, e.g. with ``{"cluster": {"join": True}}``). `ready_timeout`:
    seconds to wait for libvirtd, the daemons and a common leader. `cli`: owned by `make lab`.

    Attributes once started: `index` (lab number L), `hosts` (name -> LabHost), `admin_password`,
    `cluster_key`, `dir` (state directory), `prefix` (``hvdl<L>-``). Start with `start()` or a
    ``with`` block; `stop()` removes everything.
    """

    def __init__(self, hosts: int = 3, *, config: Mapping[str, Mapping[str, Any]] | None = None,
                 host_config: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
                 start_daemons: bool = True, ready_timeout: float = 90.0, cli: bool = False) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
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
        self._issue_certificates()
        if self.start_daemons:
            self.start_all_daemons()

    def start_all_daemons(self) -> str:
        """Start every host's daemon that is not running, wait for a common leader (returned) and
        write <dir>/openrc. For a lab made with `start_daemons=False`, e.g. to boot guests with virsh
        while the daemons start."""
        for name in self.hosts:
            if self.daemon_pid(name) is None:
                self.start_daemon(name, wait=False)
        leader = self.wait_ready()
        (self.dir / "openrc").write_text(self.openrc())
        return leader

    @property
    def ca_file(self) -> Path:
        """The lab's cluster CA certificate (HVD_CACERT, curl --cacert)."""
        return self.dir / "ca.crt"

    def _issue_certificates(self) -> None:
        """A cluster CA for the lab and a certificate per host, as `hvd cluster init` (h1, which
        also keeps the CA key and so signs joins) and `hvd cluster issue` (the others) make them:
        the lab's API and peer traffic is HTTPS with mutual TLS, like a production cluster's."""
        now = dt.datetime.now(dt.UTC)
        ca_cert, ca_key = create_ca(self.prefix, now)
        self.ca_file.write_bytes(ca_cert)
        for h in self.hosts.values():
            files = TlsFiles.under(h.data_dir / "tls")
            files.cert.parent.mkdir(mode=0o700)
            cert, key = issue_host(ca_cert, ca_key, h.name, [h.name, h.ip], now)
            for path, data in ((files.ca_cert, ca_cert), (files.cert, cert), (files.key, key),
                               *(((files.ca_key, ca_key),) if h.k == 1 else ())):
                path.write_bytes(data)
                path.chmod(0o600)
        self._session.verify = str(self.ca_file)

    def _underlay(self) -> None:
        ul = f"{self.prefix}ul"
        rt = f"{self.prefix}rt"
        run("ip", "netns", "add", ul)
        run("ip", "-n", ul, "link", "set", "lo", "up")
        run("ip", "-n", ul, "link", "add", "br0", "mtu", str(MTU), "type", "bridge")
        run("ip", "-n", ul, "link", "set", "br0", "up")
        # the root namespace's only way into the lab: a veth into the underlay, never the default route
        run("ip", "link", "add", rt, "mtu", str(MTU), "type", "veth", "peer", "name", "rt", "mtu", str(MTU),
             "netns", ul)
        run("ip", "-n", ul, "link", "set", "rt", "master", "br0", "up")
        run("ip", "addr", "add", f"{root_ip(self.index)}/24", "dev", rt)
        run("ip", "link", "set", rt, "up")

    def _start_host(self, host: LabHost) -> None:
        ul = f"{self.prefix}ul"
        run("ip", "netns", "add", host.netns)
        run("ip", "-n", host.netns, "link", "set", "lo", "up")
        # both ends at MTU 1600: a veth drops frames longer than its peer's MTU
        run("ip", "-n", host.netns, "link", "add", "ul0", "mtu", str(MTU), "type", "veth",
             "peer", "name", host.name, "mtu", str(MTU), "netns", ul)
        run("ip", "-n", ul, "link", "set", host.name, "master", "br0", "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "ul0")
        run("ip", "-n", host.netns, "link", "set", "ul0", "up")
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
        # the main libvirtd's domains, networks, pools and secrets are not this host's
        shutil.copytree("/etc/libvirt", host.path("/etc/libvirt"), dirs_exist_ok=True, symlinks=True,
                        ignore=_not_host_config)
        etc = host.path("/etc/libvirt")
        conf = etc / "libvirtd.conf"
        conf.write_text(libvirtd_conf(conf.read_text(), host.name, host.ip, host.host_uuid))
        conf = etc / "qemu.conf"
        conf.write_text(qemu_conf(conf.read_text(), host.name, host.ip))
        (etc / "storage" / "autostart").mkdir(parents=True, exist_ok=True)
        (etc / "storage" / "default.xml").write_text(
            f"<pool type='dir'><name>default</name><uuid>{uuid.uuid4()}</uuid>"
            f"<target><path>{IMAGES_PATH}</path></target></pool>\n")
        (etc / "storage" / "autostart" / "default.xml").symlink_to("../default.xml")
        # the same skeleton (owners, modes) as the real directories, without per-domain ones
        for top in ("/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"):
            for dirpath, dirnames, _ in os.walk(top):
                dirnames[:] = [d for d in dirnames if not d.startswith("domain-") and dirpath.count("/") < 6]
                with contextlib.suppress(FileNotFoundError):  # the main libvirtd may remove it meanwhile
                    st = os.stat(dirpath)
                    target = host.path(dirpath)
                    target.mkdir(exist_ok=True)
                    os.chown(target, st.st_uid, st.st_gid)
                    target.chmod(st.st_mode & 0o7777)
        host.path(IMAGES_PATH).mkdir(exist_ok=True)
        host.path(INSTANCES_PATH).mkdir(mode=0o755, exist_ok=True)
        host.path(QEMU_X509_DIR).mkdir(mode=0o750, exist_ok=True)  # libvirtd refuses to start without it
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
        for proc in [*(d.proc for d in self._daemons.values()), *self._holders.values()]:
            if proc.poll() is None:
                proc.kill()
        try:
            with labs_lock():
                try:
                    destroy_lab(self.index)
                finally:
                    drop_guard_if_unused()
        finally:
            for proc in [*(d.proc for d in self._daemons.values()), *self._holders.values()]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)  # reap our children: no zombies of ours
            for daemon in self._daemons.values():
                daemon.log.close()
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
        if (old := self._daemons.get(h.name)) is not None:
            if old.proc.poll() is None:
                raise RuntimeError(f"the hvd daemon of {h.name} runs already (pid {old.proc.pid})")
            old.log.close()
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
        """The host's API base URL (https://10.214.L.k:8774)."""
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
        """Wait until the daemons among `hosts` (default: all running ones) answer /healthz and name
        the same leader, itself running; returns the leader's name."""
        names = list(hosts) if hosts is not None else [n for n in self.hosts if self.daemon_pid(n)]
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            for name in names:
                d = self._daemons.get(name)
                if d is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"hvd daemon of {name} exited ({d.proc.returncode}):\n"
                                       f"{self.daemon_log(name)[-3000:]}")
            leaders = {(self.health(n) or {}).get("leader") for n in names}
            # a leader whose daemon is gone is only the survivors' memory until they elect anew
            if len(leaders) == 1 and (leader := leaders.pop()) in self.hosts and self.daemon_pid(leader):
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
                f"export HVD_CACERT={self.ca_file}\n"
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

    # -- faults -------------------------------------------------------------------------------

    def isolate(self, host: str | int) -> None:
        """Cut the host off the underlay (its port on the lab bridge goes down): its peers, and the
        root namespace too, no longer reach it; everything on it keeps running. Undo with `rejoin`."""
        run("ip", "-n", f"{self.prefix}ul", "link", "set", self.host(host).name, "down")

    def rejoin(self, host: str | int) -> None:
        """Put an isolated host back on the underlay."""
        run("ip", "-n", f"{self.prefix}ul", "link", "set", self.host(host).name, "up")


if __name__ == "__main__":  # python3 -m tests.lab.cluster up|down|status (see lab_cli)
    from tests.lab.lab_cli import main

    sys.exit(main())
