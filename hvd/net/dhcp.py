"""dnsmasq per network inside `qdhcp-<net>`: pure argv/hosts builders and a process adapter.

dnsmasq daemonises; its pid file is the only handle we keep, so a restart of hvd leaves DHCP
running. Processes are signalled by PID after checking /proc that the PID is still our
dnsmasq (its command line names our pid file), never by name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hvd.net.model import METADATA_IP, PortSpec, SubnetSpec, dhcp_hostname
from hvd.net.proc import NetError, in_netns, run
from hvd.net.state import ObservedDhcp

DEFAULT_LEASE_SECONDS = 86400
# How long a stopping dnsmasq may take before it is killed.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DhcpPaths:
    directory: str
    hosts: str
    pid: str
    leases: str


def dhcp_paths(dhcp_dir: str, network_id: str) -> DhcpPaths:
    base = os.path.join(dhcp_dir, network_id)
    join = os.path.join
    return DhcpPaths(base, join(base, "host"), join(base, "pid"), join(base, "leases"))


def _tag(subnet: SubnetSpec) -> str:
    return f"subnet-{subnet.id}"


def dnsmasq_argv(
    interface: str,
    subnets: Sequence[SubnetSpec],
    paths: DhcpPaths,
    *,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    user: str | None = None,
    metadata_via: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """dnsmasq's command line serving the DHCP-enabled `subnets` on `interface`.

    DNS is off (`--port=0`); addresses are only handed out to MACs in the hosts file
    (`static` ranges), as Neutron does. Options (router, DNS servers, host routes) are on
    the command line, so an option change restarts dnsmasq while a port change only reloads.
    `metadata_via` maps an IPv4 subnet id to the DHCP port's address in it: guests get a
    classless static route to METADATA_IP through it (Neutron's isolated metadata).
    """
    argv = [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--strict-order",
        "--bind-interfaces",
        f"--interface={interface}",
        "--except-interface=lo",
        "--port=0",
        f"--pid-file={paths.pid}",
        f"--dhcp-hostsfile={paths.hosts}",
        f"--dhcp-leasefile={paths.leases}",
    ]
    if user is not None:
        argv.append(f"--user={user}")
    for subnet in sorted(subnets, key=lambda s: s.id):
        if not subnet.dhcp_enabled:
            continue
        net = subnet.network
        tag = _tag(subnet)
        if net.version == 4:
            argv.append(f"--dhcp-range=set:{tag},{net.network_address},static,{net.netmask},{lease_seconds}s")
            if subnet.gateway:
                argv.append(f"--dhcp-option=tag:{tag},option:router,{subnet.gateway}")
            else:
                # An empty option 3 tells clients there is no router at all.
                argv.append(f"--dhcp-option=tag:{tag},option:router")
            if subnet.dns:
                argv.append(f"--dhcp-option=tag:{tag},option:dns-server,{','.join(subnet.dns)}")
            routes = [(r.destination, r.nexthop) for r in subnet.host_routes]
            via = (metadata_via or {}).get(subnet.id)
            if via is not None:
                routes.append((f"{METADATA_IP}/32", via))
            has_default = any(ipaddress.ip_network(dst, strict=False).prefixlen == 0 for dst, _ in routes)
            if routes and subnet.gateway and not has_default:
                # RFC 3442: a client given option 121 ignores option 3, so the default goes in too
                routes.append(("0.0.0.0/0", subnet.gateway))
            if routes:
                text = ",".join(f"{dst},{nexthop}" for dst, nexthop in routes)
                argv.append(f"--dhcp-option=tag:{tag},option:classless-static-route,{text}")
        else:
            argv.append(f"--dhcp-range=set:{tag},{net.network_address},static,{net.prefixlen},{lease_seconds}s")
            if subnet.dns:
                dns6 = ",".join(f"[{d}]" for d in subnet.dns)
                argv.append(f"--dhcp-option=tag:{tag},option6:dns-server,{dns6}")
    return tuple(argv)


def render_hosts(ports: Sequence[PortSpec], subnets: Sequence[SubnetSpec], *, exclude: str | None = None) -> str:
    """`mac,hostname,ip` lines for every fixed IP of `ports` in a DHCP-enabled subnet.

    `exclude` is the DHCP port's own id. IPv6 addresses are bracketed as dnsmasq wants.
    """
    enabled = {s.id for s in subnets if s.dhcp_enabled}
    lines = []
    for port in sorted(ports, key=lambda p: p.id):
        if port.id == exclude:
            continue
        for fixed in port.fixed_ips:
            if fixed.subnet_id not in enabled:
                continue
            ip = ipaddress.ip_address(fixed.ip)
            shown = f"[{ip}]" if ip.version == 6 else str(ip)
            name = port.hostname or dhcp_hostname(str(ip))
            lines.append(f"{port.mac},{name},{shown}")
    return "".join(f"{line}\n" for line in lines)


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat; None if the PID is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    # Killed daemons may linger as zombies until PID 1 reaps them: a zombie is dead.
    return _proc_state(pid) not in (None, "Z", "X")


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class DnsmasqManager:
    """Owns the dnsmasq processes under `dhcp_dir` (one sub-directory per network)."""

    def __init__(self, dhcp_dir: str) -> None:
        self.dhcp_dir = dhcp_dir

    def paths(self, network_id: str) -> DhcpPaths:
        return dhcp_paths(self.dhcp_dir, network_id)

    def running_pid(self, network_id: str) -> int | None:
        """The PID of this network's dnsmasq if it is alive and really ours."""
        paths = self.paths(network_id)
        try:
            pid = int(Path(paths.pid).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        cmdline = _cmdline(pid)
        if not _alive(pid) or cmdline is None or f"--pid-file={paths.pid}" not in cmdline:
            return None
        return pid

    def observe(self, network_id: str) -> ObservedDhcp:
        paths = self.paths(network_id)
        pid = self.running_pid(network_id)
        try:
            hosts: str | None = Path(paths.hosts).read_text()
        except FileNotFoundError:
            hosts = None
        return ObservedDhcp(network_id, pid, _cmdline(pid) if pid is not None else None, hosts)

    def observe_all(self) -> dict[str, ObservedDhcp]:
        """Every network with a state directory here (a live process or leftovers)."""
        try:
            names = sorted(os.listdir(self.dhcp_dir))
        except FileNotFoundError:
            return {}
        return {n: self.observe(n) for n in names if os.path.isdir(os.path.join(self.dhcp_dir, n))}

    def write_hosts(self, network_id: str, content: str) -> None:
        """Replace the hosts file atomically so dnsmasq never reads half of it."""
        paths = self.paths(network_id)
        # dnsmasq re-reads the file after dropping privileges: keep it world-readable.
        os.makedirs(paths.directory, mode=0o755, exist_ok=True)
        tmp = paths.hosts + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, paths.hosts)

    async def start(self, network_id: str, netns: str, argv: Sequence[str]) -> int:
        """Start dnsmasq in `netns`; returns its PID once the daemon has written its pid file."""
        paths = self.paths(network_id)
        os.makedirs(paths.directory, mode=0o755, exist_ok=True)
        if not os.path.exists(paths.hosts):
            self.write_hosts(network_id, "")
        # The foreground process exits once the daemon is up, so this returns promptly.
        await run(in_netns(netns, argv))
        pid = self.running_pid(network_id)
        if pid is None:
            raise NetError(f"dnsmasq for network {network_id} did not stay up")
        return pid

    def reload(self, pid: int) -> None:
        os.kill(pid, signal.SIGHUP)

    async def stop(self, network_id: str, pid: int | None, *, purge: bool = True) -> None:
        """Stop our dnsmasq (TERM, then KILL after STOP_TIMEOUT); `purge` removes its files."""
        if pid is not None and pid == self.running_pid(network_id):
            os.kill(pid, signal.SIGTERM)
            if not await _wait_gone(pid, STOP_TIMEOUT):
                os.kill(pid, signal.SIGKILL)
                await _wait_gone(pid, STOP_TIMEOUT)
        if purge:
            shutil.rmtree(self.paths(network_id).directory, ignore_errors=True)

    async def restart_dead(self, expected: Mapping[str, tuple[str, Sequence[str]]]) -> list[str]:
        """Supervision: start each network's dnsmasq again if it died.

        `expected` maps network id -> (namespace, argv). Returns the networks restarted.
        """
        restarted = []
        for network_id, (netns, argv) in sorted(expected.items()):
            if self.running_pid(network_id) is None:
                await self.start(network_id, netns, argv)
                restarted.append(network_id)
        return restarted


async def _wait_gone(pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not _alive(pid)
