"""What a guest learns about itself: the OpenStack and EC2 metadata documents (pure).

The config drive (``hvd.storage.config_drive``) and the metadata service (``hvd.net.metadata``)
both render from here, so a guest reads the same bytes from ``/openstack/latest/...`` on its
config drive and from ``http://169.254.169.254/openstack/latest/...``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hvd.catalog.cmd_compute import PASSWORD_KEY
from hvd.storage.config_drive import (
    VERSION_DIR,
    NetworkDataNic,
    drive_files,
    render_meta_data,
    render_network_data,
)

# Versions Nova's metadata API lists; every one answers with today's documents.
OPENSTACK_VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06",
                      "2017-02-22", "2018-08-27", "latest")
EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
                "2008-09-01", "2009-04-04", "latest")
PASSWORD = "password"  # the guest's encrypted admin password, as it posted it (empty until then)

Answer = tuple[bytes, str]  # body, content type


def hostname_of(name: str) -> str:
    """A DNS label from a display name (Nova's sanitize_hostname)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63]
    return label or "server"


@dataclass(frozen=True)
class InstanceFacts:
    """Everything the documents say about one instance, read from the catalog."""

    uuid: str
    seq: int
    name: str
    project_id: str
    availability_zone: str
    image_id: str = ""
    flavor_name: str = ""
    key_name: str | None = None
    public_key: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    user_data: bytes | None = None
    nics: tuple[NetworkDataNic, ...] = ()
    fixed_ips: tuple[str, ...] = ()
    floating_ips: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    password: str = ""

    @property
    def hostname(self) -> str:
        return hostname_of(self.name)


def facts_of(inst: Mapping[str, Any], *, availability_zone: str, nics: Sequence[NetworkDataNic] = (),
             fixed_ips: Sequence[str] = (), floating_ips: Sequence[str] = (),
             security_groups: Sequence[str] = ()) -> InstanceFacts:
    """Facts from a catalog instance row (JSON columns decoded); `availability_zone` is the
    instance's own or, when it asked for none, its host's."""
    flavor = inst.get("flavor") or {}
    return InstanceFacts(
        uuid=str(inst["id"]), seq=int(inst["seq"]), name=str(inst["name"]), project_id=str(inst["project_id"]),
        availability_zone=inst.get("availability_zone") or availability_zone, image_id=str(inst.get("image_id") or ""),
        flavor_name=str(flavor.get("name", "")) if isinstance(flavor, Mapping) else "",
        key_name=inst.get("key_name") or None, public_key=inst.get("public_key") or None,
        meta=dict(inst.get("metadata") or {}),
        user_data=inst["user_data"].encode() if inst.get("user_data") else None,
        nics=tuple(nics), fixed_ips=tuple(fixed_ips), floating_ips=tuple(floating_ips),
        security_groups=tuple(security_groups),
        password=str((inst.get("extra") or {}).get(PASSWORD_KEY) or ""))


def network_data_nics(ports: Sequence[Mapping[str, Any]]) -> list[NetworkDataNic]:
    """network_data.json entries from `hvd.net.desired.instance_ports` rows: DHCP where the
    subnet serves it, else the static address."""
    out = []
    for p in ports:
        fixed = p["fixed_ips"][0] if p["fixed_ips"] else None
        static = fixed is not None and not fixed["enable_dhcp"]
        netmask = str(ipaddress.ip_network(fixed["cidr"]).netmask) if fixed is not None else None
        out.append(NetworkDataNic(
            port_id=p["id"], mac=p["mac_address"], mtu=p["mtu"], network_id=p["network_id"],
            ip_address=fixed["ip"] if static and fixed else None, netmask=netmask if static else None,
            gateway=fixed["gateway_ip"] if static and fixed else None,
            dns=tuple(json.loads(fixed["dns_nameservers"])) if fixed else (),
            ip_version=int(fixed["ip_version"]) if fixed else 4))
    return out


def openstack_files(facts: InstanceFacts) -> dict[str, bytes]:
    """The ``openstack/<version>/`` documents by file name (user_data only when given)."""
    meta = render_meta_data(
        uuid=facts.uuid, name=facts.name, hostname=facts.hostname,
        public_keys={facts.key_name: facts.public_key} if facts.key_name and facts.public_key else {},
        meta=facts.meta, availability_zone=facts.availability_zone, project_id=facts.project_id)
    files = drive_files(meta, facts.user_data, render_network_data(facts.nics))
    return {path.removeprefix(VERSION_DIR + "/"): content for path, content in files.items()}


def config_drive_files(facts: InstanceFacts) -> dict[str, bytes]:
    """Path inside the config drive -> content (the same bytes the metadata service serves)."""
    return {f"{VERSION_DIR}/{name}": content for name, content in openstack_files(facts).items()}


def _listing(names: Sequence[str]) -> Answer:
    return "\n".join(names).encode(), "text/plain"


def openstack_answer(facts: InstanceFacts, parts: Sequence[str]) -> Answer | None:
    """GET ``/openstack/<parts...>``; None = 404."""
    if not parts:
        return _listing(OPENSTACK_VERSIONS)
    if parts[0] not in OPENSTACK_VERSIONS or len(parts) > 2:
        return None
    files = openstack_files(facts)
    if len(parts) == 1:
        return _listing([*sorted(files), PASSWORD])
    name = parts[1]
    if name == PASSWORD:
        return facts.password.encode(), "text/plain"
    if name not in files:
        return None
    return files[name], "application/json" if name.endswith(".json") else "application/octet-stream"


def is_password_path(path: str) -> bool:
    """``/openstack/<version>/password``: where a guest posts its encrypted password."""
    parts = [p for p in path.split("/") if p]
    return len(parts) == 3 and parts[0] == "openstack" and parts[1] in OPENSTACK_VERSIONS and parts[2] == PASSWORD


def ec2_meta_data(facts: InstanceFacts) -> dict[str, Any]:
    """The ``meta-data/`` tree (leaves are strings), as Nova's EC2-compatible API shapes it."""
    tree: dict[str, Any] = {
        "ami-id": facts.image_id,
        "ami-launch-index": "0",
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
        "hostname": facts.hostname,
        "instance-action": "none",
        "instance-id": f"i-{facts.seq:08x}",
        "instance-type": facts.flavor_name,
        "local-hostname": facts.hostname,
        "local-ipv4": next((ip for ip in facts.fixed_ips if ipaddress.ip_address(ip).version == 4), ""),
        "placement": {"availability-zone": facts.availability_zone},
        "public-hostname": facts.hostname,
        "public-ipv4": facts.floating_ips[0] if facts.floating_ips else "",
        "reservation-id": f"r-{facts.uuid[:8]}",
        "security-groups": "\n".join(facts.security_groups),
    }
    if facts.nics:
        tree["mac"] = facts.nics[0].mac
    if facts.key_name and facts.public_key:
        tree["public-keys"] = {"0": {"openssh-key": facts.public_key}}
    return tree


def ec2_answer(facts: InstanceFacts, parts: Sequence[str]) -> Answer | None:
    """GET ``/<version>/<parts...>`` of the EC2-style API; None = 404."""
    if not parts:
        return _listing(["meta-data/", *(["user-data"] if facts.user_data is not None else [])])
    if parts[0] == "user-data" and len(parts) == 1:
        return (facts.user_data, "application/octet-stream") if facts.user_data is not None else None
    if parts[0] != "meta-data":
        return None
    node: Any = ec2_meta_data(facts)
    for index, part in enumerate(parts[1:]):
        if not isinstance(node, dict) or part not in node:
            return None
        if index == 0 and part == "public-keys" and len(parts) == 2:
            return _listing([f"0={facts.key_name}"])  # EC2 lists keys as index=name
        node = node[part]
    if isinstance(node, dict):
        return _listing([f"{k}/" if isinstance(v, dict) else k for k, v in node.items()])
    return str(node).encode(), "text/plain"


def answer(facts: InstanceFacts, path: str) -> Answer | None:
    """The document at URL `path` (OpenStack or EC2 layout) for `facts`; None = 404."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "openstack":
        return openstack_answer(facts, parts[1:])
    if not parts:
        return _listing([*EC2_VERSIONS, "openstack"])
    if parts[0] not in EC2_VERSIONS:
        return None
    return ec2_answer(facts, parts[1:])
