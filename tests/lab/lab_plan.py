"""The multi-host lab's plan: names, addresses and config files of lab number L, as pure data.

Lab L owns 10.214.L.0/24 (host k at .k, the root namespace at .254) and names everything
``hvdl<L>-...``; see tests/lab/cluster.py for how the plan is carried out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
# QEMU's x509 directory, each host's own (/etc/pki is the machine's, shared by every lab host)
QEMU_X509_DIR = "/var/lib/libvirt/hvd-x509"
IMAGES_PATH = "/var/lib/libvirt/images"
MAX_HOSTS = 250  # .1-.250 of the lab /24; .254 is the root namespace


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
    raise RuntimeError(f"all {MAX_LABS} lab numbers are in use: run 'make lab-down'")


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
    peers = [f"{host_name(j)}=https://{host_ip(index, j)}:{API_PORT}" for j in range(1, hosts + 1)]
    base: dict[str, dict[str, Any]] = {
        "host": {"name": name, "data_dir": str(data_dir), "instances_path": INSTANCES_PATH},
        "api": {"listen": host_ip(index, k), "port": API_PORT},
        "libvirt": {"uri": "qemu:///system", "virt_type": "qemu"},
        "identity": {"admin_password": admin_password},
        "compute": {"driver": "libvirt", "reserved_host_memory_mb": 512},
        "network": {"local_ip": host_ip(index, k), "vxlan_underlay": "ul0",
                    "netns_prefix": f"{lab_name(index)}{name}-"},
        "cluster": {"peers": peers, "cluster_key": cluster_key},
        # certificates under <data_dir>/tls from the lab's own cluster CA (LabCluster._issue_certificates)
        "tls": {"enabled": True, "qemu_x509_dir": QEMU_X509_DIR},
    }
    return merge_config(base, overrides)


def with_settings(text: str, settings: Mapping[str, str], comment: str) -> str:
    """A libvirt .conf `text` with `settings` (key -> value as written) appended and any earlier
    uncommented setting of those keys removed (libvirt takes the first one it reads)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if skipping:  # the rest of a multi-line [ ... ] value
            skipping = "]" not in line
            continue
        key = line.split("=", 1)[0].strip()
        if "=" in line and key in settings and not line.lstrip().startswith("#"):
            skipping = "[" in line and "]" not in line
            continue
        out.append(line)
    out.append(f"# {comment}")
    out.extend(f"{key} = {value}" for key, value in settings.items())
    return "\n".join(out) + "\n"


def libvirtd_conf(base: str, name: str, ip: str, host_uuid: str) -> str:
    """A host's libvirtd.conf from the machine's `base`: its own identity (else libvirt refuses to
    migrate "to the same host") and a TCP listener without auth on the lab address only."""
    return with_settings(base, {
        "host_uuid": f'"{host_uuid}"', "listen_tcp": "1", "listen_tls": "0", "listen_addr": f'"{ip}"',
        "auth_tcp": '"none"', "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
    }, f"hvd lab host {name}")


def qemu_conf(base: str, name: str, ip: str) -> str:
    """A host's qemu.conf from the machine's `base`: migration streams on the lab address; no
    cgroups (the lab tracks processes in its own cgroup and there is no systemd); NBD clients take
    the host's certificates from the directory its hvd writes them to, and so do TLS migrations."""
    return with_settings(base, {
        "migration_host": f'"{ip}"', "migration_address": f'"{ip}"', "cgroup_controllers": "[ ]",
        "nbd_tls_x509_cert_dir": f'"{QEMU_X509_DIR}"', "migrate_tls_x509_cert_dir": f'"{QEMU_X509_DIR}"',
    }, f"hvd lab host {name}")
