"""The model of hvd.toml.

Frozen pydantic sections with `extra="forbid"`: an unknown key is an error naming the key. Every
field has a default and a description; `hvd.toml.example` is generated from this model
(`hvd config example`) and a test fails when the committed file differs.

Environment overrides: `HVD_<SECTION>__<FIELD>=value` (value parsed as JSON when it parses,
else taken as a string), e.g. `HVD_API__PORT=8775`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hvd.catalog.protocol import PROTOCOL
from hvd.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostSection(Section):
    name: str = Field("", description="This host's name in the cluster; empty = the machine's hostname.")
    data_dir: Path = Field(
        Path("/var/lib/hvd"), description="Catalog, image store and tokens live here (see also instances_path)."
    )
    instances_path: Path = Field(
        Path("/var/lib/hvd/instances"),
        description="Instance dirs and the image cache (_base); must be searchable by libvirt-qemu.",
    )
    availability_zone: str = Field("nova", description="Availability zone of this host (Nova's default 'nova').")


class ApiSection(Section):
    listen: str = Field("127.0.0.1", description="Listen address; loopback by default so nothing is exposed.")
    port: int = Field(8774, ge=1, le=65535, description="TCP port of the public and peer API.")
    max_body_mib: int = Field(
        1, ge=1, description="Largest JSON request body; bigger bodies get 413 (image uploads are streamed apart)."
    )
    wait_timeout_s: float = Field(
        600.0, gt=0, description="Longest time `?wait=true` blocks before answering with the current state."
    )
    metrics_from: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"], max_length=64,
        description="Networks whose clients may read /metrics without a token (a Prometheus on the host or the"
                    " management network); others need a token with host:read.",
    )

    @field_validator("metrics_from")
    @classmethod
    def _networks(cls, nets: list[str]) -> list[str]:
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"metrics_from: {net!r} is not a network ({exc})") from exc
        return nets


class LibvirtSection(Section):
    uri: str = Field("qemu:///system", description="libvirt connection URI.")
    virt_type: Literal["kvm", "qemu"] = Field(
        "kvm", description="Domain type: kvm (hardware) or qemu (TCG, for hosts without usable KVM)."
    )
    migration_uri: str = Field(
        "qemu+tcp://{address}/system", min_length=1, max_length=255,
        description="libvirt URI of a destination host for live migration ({address}: the host part of its API"
                    " URL). Plain TCP suits a closed lab network; in production use qemu+tls://{address}/system"
                    " with libvirt's TLS certificates (see docs/operations.md).",
    )
    migration_max_downtime_ms: int = Field(
        500, ge=10, le=60000, description="Longest pause of the guest at the switch-over of a live migration.")
    migration_tls: bool = Field(
        True, description="With [tls] on, live-migration streams (memory and copied disks) are TLS with the cluster"
                          " certificates from [tls] qemu_x509_dir (qemu.conf's migrate_tls_x509_cert_dir, else"
                          " default_tls_x509_cert_dir, must name it); off = in clear.")
    migration_auto_converge: bool = Field(
        True, description="Throttle a guest that dirties memory faster than it is copied, so migrations finish.")
    migration_timeout_s: float = Field(
        600.0, gt=0, le=86400, description="A live migration still copying after this long is aborted (the guest"
                                           " stays on its source).")


class LogSection(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")
    file: str = Field("", description="Log file; empty = standard error (journald under systemd).")


class IdentitySection(Section):
    token_ttl_s: int = Field(86400, ge=60, description="Token lifetime (Keystone's default is 24 h).")
    admin_password: str = Field(
        "", description="Password of the bootstrap admin; empty = generated once and written to openrc_path."
    )
    openrc_path: str = Field(
        "", description="Where the first start writes admin credentials (mode 0600); empty = <data_dir>/openrc."
    )
    policy: dict[str, str] = Field(
        default_factory=dict,
        description="Policy overrides, rule name -> 'admin' | 'member' | 'reader' | 'any' (e.g. compute:migrate).",
    )


class ComputeSection(Section):
    driver: Literal["libvirt", "fake"] = Field(
        "libvirt", description="Compute driver; 'fake' is for tests and scale benchmarks only."
    )
    cpu_allocation_ratio: float = Field(16.0, gt=0, description="vCPUs per physical CPU (Nova default 16).")
    ram_allocation_ratio: float = Field(1.5, gt=0, description="RAM over-commit ratio (Nova default 1.5).")
    disk_allocation_ratio: float = Field(1.0, gt=0, description="Disk over-commit ratio (Nova default 1.0).")
    reserved_host_memory_mb: int = Field(512, ge=0, description="RAM kept for the host itself.")
    reserved_host_disk_mb: int = Field(0, ge=0, description="Disk kept for the host itself.")
    reserved_host_cpus: int = Field(0, ge=0, description="Physical CPUs kept for the host itself.")
    force_raw_images: bool = Field(
        True, description="Convert cached qcow2 bases to raw (faster overlays; costs cache disk space)."
    )
    image_cache_max_age_s: int = Field(
        86400, ge=0, description="Unused cached bases older than this are removed; 0 = never."
    )
    reboot_timeout_s: float = Field(
        60.0, gt=0, description="Soft reboot falls back to hard reboot after this long."
    )
    shutdown_timeout_s: float = Field(
        60.0, gt=0, description="Clean (ACPI) stop waits this long before powering the domain off."
    )
    resize_confirm_window_s: int = Field(
        0, ge=0, description="Resized instances are confirmed automatically after this long; 0 = never."
    )
    instance_name_prefix: str = Field(
        "instance-", pattern=r"^instance-[a-z0-9-]*$",
        description="Domain names are this + %08x of the instance number (Nova's instance_name_template).",
    )
    sync_power_state_interval_s: float = Field(
        60.0, gt=0, description="Period of the power-state sync with the hypervisor (events cover the rest)."
    )
    vnc_enabled: bool = Field(
        True, description="Give new domains a VNC display (remote consoles and screenshots); takes effect at a"
                          " server's next start.",
    )
    vnc_listen: str = Field(
        "127.0.0.1", description="Address VNC displays listen on; only this host's console proxy connects, so"
                                 " loopback (valid on every host: live migration keeps it) unless you know better.",
    )
    console_token_ttl_s: int = Field(
        600, ge=5, le=86400, description="A remote-console URL works once, within this many seconds (Nova's 600).")
    console_base_url: str = Field(
        "", max_length=255,
        description="Base of the remote-console URLs this host hands out (e.g. wss://console.example:443 behind a"
                    " proxy); empty = the URL the client used, or this host's cluster.peers entry when forwarded.",
    )
    novnc_dir: str = Field(
        "/usr/share/novnc", max_length=4096,
        description="noVNC's files (Debian package novnc), served read-only at /novnc/ so a VNC console opens in"
                    " a browser (remote-console's web_url); empty = off; a missing directory is off too (logged).",
    )

    @field_validator("vnc_listen")
    @classmethod
    def _vnc_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"vnc_listen: {value!r} is not an IP address") from exc
        return value

    @field_validator("novnc_dir")
    @classmethod
    def _novnc_dir(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"novnc_dir: {value!r} must be an absolute path (or empty: off)")
        return value

    @field_validator("console_base_url")
    @classmethod
    def _console_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"console_base_url: {value!r} must start with ws://, wss://, http:// or https://")
        return value.rstrip("/")


class SchedulerSection(Section):
    max_attempts: int = Field(3, ge=1, description="Hosts tried per placement (Nova's scheduler_max_attempts).")
    max_candidates: int = Field(
        20, ge=0, le=100000,
        description="A decision stops evaluating hosts (in a random rotation) once this many passed the filters,"
                    " and weighs those (as Nomad limits its candidates): fast at thousands of hosts, still spread."
                    " 0 = evaluate every host.",
    )
    filters: list[str] = Field(
        default_factory=lambda: [
            "RetryFilter",
            "AvailabilityZoneFilter",
            "RamFilter",
            "DiskFilter",
            "ComputeFilter",
            "ComputeCapabilitiesFilter",
            "ImagePropertiesFilter",
            "ServerGroupAntiAffinityFilter",
            "ServerGroupAffinityFilter",
        ],
        description="Filters in order (CoreFilter is optional, as in Nova).",
    )
    ram_weight_multiplier: float = Field(1.0, description="Weight of free RAM (positive = spread).")
    disk_weight_multiplier: float = Field(0.0, description="Weight of free disk.")
    vcpu_weight_multiplier: float = Field(0.0, description="Weight of free vCPUs.")
    instance_count_weight_multiplier: float = Field(0.0, description="Weight of instance count (negative = spread).")


class NetworkSection(Section):
    tenant_network_types: list[Literal["local", "flat", "vlan", "vxlan"]] = Field(
        default_factory=lambda: ["vxlan", "local"],  # type: ignore[arg-type]
        description="Types for tenant networks, tried in order (fallback when a range is exhausted).",
    )
    flat_networks: list[str] = Field(default_factory=list, description="Physical labels usable by flat networks.")
    physical_interface_mappings: dict[str, str] = Field(
        default_factory=dict, description="Physical label -> this host's NIC (labels are cluster-wide)."
    )
    network_vlan_ranges: list[str] = Field(
        default_factory=lambda: ["default:3001:4000"], description="label:first:last VLAN ids for tenant networks."
    )
    vni_ranges: list[str] = Field(default_factory=lambda: ["1001:2000"], description="first:last VXLAN VNIs.")
    local_ip: str = Field("", description="VTEP address already on a NIC of this host; empty = no VXLAN here.")
    vxlan_underlay: str = Field("", description="NIC carrying VXLAN; empty = the one holding local_ip.")
    backend: Literal["auto", "linux", "fake"] = Field(
        "auto",
        description="Host networking: linux (bridges, dnsmasq, nftables), fake (in memory, for tests);"
        " auto = fake with the fake compute driver, else linux.",
    )
    host_netns: str = Field(
        "", description="Namespace holding the bridges; empty = the daemon's own (production). Labs use one per host."
    )
    netns_prefix: str = Field(
        "", description="Prefix of this host's qdhcp-/qrouter- namespaces, so daemons sharing a kernel stay apart."
    )
    dhcp_dir: str = Field("", description="dnsmasq state (hosts, leases, pid files); empty = <data_dir>/dhcp.")
    dnsmasq_user: str = Field(
        "", description="User dnsmasq drops to; empty = its default (nobody, which must be able to read dhcp_dir)."
    )
    claim_all_devices: bool = Field(
        False,
        description="true = every brq/tap/vxlan device and prefixed namespace here is hvd's (removed when"
        " unknown); false = only those this daemon recorded creating in data_dir (safe when other daemons"
        " or tools share the host namespace).",
    )
    converge_interval_s: float = Field(
        30.0, gt=0, description="Period of the full converge and dnsmasq supervision (changes converge at once)."
    )
    metadata_enabled: bool = Field(
        True,
        description="Serve the metadata service (http://169.254.169.254, OpenStack and EC2 paths) in each qdhcp-"
        " namespace here, with a DHCP route to it; servers' config drives stay on (both say the same).",
    )


class VolumeBackendConfig(Section):
    """One volume backend of this host (Cinder's enabled_backends entry)."""

    name: str = Field("file", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="Backend name; a volume type picks it with extra spec volume_backend_name.")
    driver: Literal["file", "lvm"] = Field("file", description="file: image files in a directory; lvm: logical"
                                           " volumes in a volume group.")
    path: str = Field("", description="file: the directory of the volume files (empty = <data_dir>/volumes).")
    format: Literal["raw", "qcow2"] = Field("raw", description="file: format of new volume files (raw: sparse).")
    volume_group: str = Field("", pattern=r"^[A-Za-z0-9_.+-]{0,127}$",
                              description="lvm: the volume group volumes are created in (must exist).")
    thin_pool: str = Field("", pattern=r"^[A-Za-z0-9_.+-]{0,127}$",
                           description="lvm: a thin pool in the volume group; empty = thick LVs.")
    reserved_gb: int = Field(0, ge=0, le=1 << 40,
                             description="GiB of the backend never claimed by volumes (room for the filesystem's"
                             " other users); new volumes and extends are refused past total - reserved_gb.")
    max_over_subscription_ratio: float = Field(
        20.0, ge=1.0, le=1000.0,
        description="Thin backends only (file: sparse files; lvm: with thin_pool): volumes and snapshots may claim"
        " up to (total - reserved_gb) x this many GiB, as Cinder's option of that name; 1.0 = no over-subscription."
        " Whatever the ratio, a thin backend whose real free space is down to reserved_gb takes no new volume.")

    @model_validator(mode="after")
    def _complete(self) -> VolumeBackendConfig:
        if self.driver == "lvm" and not self.volume_group:
            raise ValueError(f"volume backend '{self.name}': driver lvm needs volume_group")
        return self


class VolumesSection(Section):
    """Block storage on this host (hvd/storage/volumes/)."""

    enabled: bool = Field(True, description="Serve volumes from this host's backends (false = no backend here).")
    backends: list[VolumeBackendConfig] = Field(
        default_factory=lambda: [VolumeBackendConfig()], max_length=16,
        description="This host's volume backends; the first is used by volume types that name none.")
    default_type: str = Field("default", min_length=1, max_length=255,
                              description="Volume type of volumes created without one (made at start when missing).")
    wipe_on_delete: Literal["none", "zero", "discard"] = Field(
        "none", description="What happens to a deleted volume's blocks first: nothing, overwritten with zeros"
                            " (Cinder's volume_clear=zero), or discarded (thin LVs and sparse files read zeros).")
    backup_dir: str = Field("", description="Directory of volume backups (empty = <data_dir>/backups); may be a"
                                            " shared NFS mount.")
    backup_chunk_mib: int = Field(4, ge=1, le=64, description="Backup chunk size: unit of dedup and of sha256.")
    backup_compression_level: int = Field(1, ge=0, le=19, description="zstd level of backup chunks (0 = stored"
                                                                      " uncompressed; 1 = fastest).")
    operation_timeout_s: float = Field(
        3600.0, gt=0,
        description="Longest run of one external command (qemu-img convert, lvcreate, ...) before it is killed.")

    @field_validator("backends")
    @classmethod
    def _unique(cls, backends: list[VolumeBackendConfig]) -> list[VolumeBackendConfig]:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"volume backend names must be unique: {names}")
        return backends


class ImagesSection(Section):
    free_space_reserve_mb: int = Field(
        1024, ge=0, le=2**40,
        description="An upload is refused (507) when it would leave less than this free in the image store's"
                    " filesystem (checked before and while the data arrives), so images cannot fill the host.",
    )
    replicas: int = Field(
        2, ge=1, le=100,
        description="Hosts that keep each image's data (uploads and snapshots are copied to replicas - 1 others,"
                    " clamped to the cluster size), so one dead host does not lose an image.",
    )


class FencingSection(Section):
    """When a host dies: nothing of it is rebuilt elsewhere before it is fenced (hvd/cluster/fencing.py)."""

    fence_delay_s: float = Field(
        30.0, gt=0, le=3600,
        description="The leader fences a host dead in gossip this long (longer than self_fence_s: a cut-off host"
                    " has stopped its guests by then).",
    )
    self_fence_s: float = Field(
        20.0, gt=0, le=3600,
        description="A host out of touch with a Raft quorum this long stops its guests itself (Proxmox HA's"
                    " watchdog idea, without hardware); 0 < self_fence_s < fence_delay_s.",
    )
    fence_agent: list[str] = Field(
        default_factory=list, max_length=64,
        description="Optional command run by the leader before it fences a host (e.g. an IPMI or Redfish power-off),"
                    " argv with {host}; the fence is committed only if it exits 0. Empty = rely on self-fencing.",
    )
    auto_evacuate: bool = Field(
        False, description="Rebuild a fenced host's servers elsewhere at once (else: 'evacuate' by an admin).")
    evacuations_per_minute: int = Field(
        10, ge=1, le=10000, description="Rate limit of automatic evacuations, so a lost rack does not storm the rest.")

    @model_validator(mode="after")
    def _self_fence_first(self) -> FencingSection:
        if self.self_fence_s >= self.fence_delay_s:
            raise ValueError(f"self_fence_s ({self.self_fence_s}) must be shorter than fence_delay_s"
                             f" ({self.fence_delay_s}): a cut-off host must stop its guests before it is fenced")
        return self


class ClusterSection(Section):
    node_id: str = Field("", description="Stable id of this node; empty = host.name.")
    peers: list[str] = Field(
        default_factory=list,
        description="Members as 'node_id=https://host:port' (http:// without [tls]; this node may be listed too);"
        " empty = all-in-one, a one-voter cluster of this node. Every member must list the same set (see voters).",
    )
    voters: int = Field(
        3, ge=1, le=7,
        description="The first N members by sorted node id vote in Raft; the rest replicate as learners.",
    )
    cluster_key: str = Field(
        "", description="Shared secret (>= 16 chars) that signs peer requests (HMAC-SHA256); required with peers."
    )
    join: bool = Field(
        False,
        description="Join a running cluster instead of founding one: start with no membership and wait until a"
        " member adds this node (POST /v1/cluster/members). peers then only needs to name reachable members.",
    )
    election_timeout_ms: int = Field(
        600, ge=50, description="Base election timeout (randomised up to 2x); lower = faster failover, more noise."
    )
    heartbeat_ms: int = Field(100, ge=10, description="Leader heartbeat period; well under the election timeout.")
    propose_timeout_s: float = Field(
        10.0, gt=0, description="How long a write waits for a leader (election, forwarding) before 503."
    )
    advertise_protocol: int = Field(
        0, ge=0, le=PROTOCOL,
        description="For rolling-upgrade drills: advertise this older catalog protocol level instead of this"
        " build's (0 = this build's), so the cluster holds back newer commands as if this host ran an older hvd.",
    )

    @field_validator("peers")
    @classmethod
    def _peer_format(cls, peers: list[str]) -> list[str]:
        for peer in peers:
            node, sep, url = peer.partition("=")
            if not sep or not node.strip() or not url.startswith(("http://", "https://")):
                raise ValueError(f"peer {peer!r} is not 'node_id=https://host:port'")
        return peers

    @model_validator(mode="after")
    def _key_with_peers(self) -> ClusterSection:
        if self.peers and len(self.cluster_key) < 16:
            raise ValueError("cluster_key (>= 16 characters) is required when peers are configured")
        if self.heartbeat_ms * 3 > self.election_timeout_ms:
            raise ValueError("heartbeat_ms must be at most a third of election_timeout_ms")
        return self

    def peer_urls(self) -> dict[str, str]:
        """node_id -> peer API base URL, for every listed member."""
        return {node.strip(): url.strip().rstrip("/") for node, _, url in (p.partition("=") for p in self.peers)}


class TlsSection(Section):
    """TLS of the API and peer listener, with a cluster CA (hvd/cluster/tls.py, docs/operations.md)."""

    enabled: bool = Field(
        False,
        description="Serve the API and peer routes over HTTPS with this host's certificate; peers then call each"
        " other with mutual TLS (peer URLs are https://). Set up with `hvd cluster init` / `hvd cluster join`.",
    )
    ca_file: str = Field("", description="The cluster CA certificate; empty = <data_dir>/tls/ca.crt.")
    ca_key_file: str = Field(
        "", description="The cluster CA key (only on hosts that sign join requests); empty = <data_dir>/tls/ca.key."
    )
    cert_file: str = Field("", description="This host's certificate; empty = <data_dir>/tls/host.crt.")
    key_file: str = Field("", description="This host's private key (mode 0600); empty = <data_dir>/tls/host.key.")
    qemu_x509_dir: str = Field(
        "", max_length=255,
        description="Where hvd writes the cluster CA and this host's certificate for QEMU (NBD exports of volumes"
        " over mutual TLS); empty = /etc/pki/qemu (libvirt's default) with the libvirt driver, <data_dir>/qemu-x509"
        " with the fake one. qemu.conf's nbd_tls_x509_cert_dir (or default_tls_x509_cert_dir) must name it (hvd"
        " doctor checks).",
    )
    insecure_plaintext: bool = Field(
        False,
        description="Allow a cluster on non-loopback addresses without TLS (tokens, passwords and the Raft stream"
        " then cross the network in clear): for closed lab networks only.",
    )


class GossipSection(Section):
    """SWIM gossip (hvd/cluster/gossip). The defaults are tuned by bench/gossip.py for a LAN of 5-100
    hosts: a crashed host is known dead everywhere in ~1.5 s (p99 ~2.5 s at 10 hosts, memberlist's
    LAN defaults take 4-24 s), and no live host was declared dead under 10 % packet loss."""

    bind_address: str = Field(
        "", description="UDP address gossip listens on; empty = api.listen. Used only with cluster peers."
    )
    port: int = Field(
        0, ge=0, le=65535,
        description="UDP port; 0 = the API's port number (UDP and TCP do not clash: one number to open).",
    )
    advertise_address: str = Field(
        "", description="Address other hosts send to; empty = bind_address, or this node's host in cluster.peers"
        " when bound to a wildcard address.",
    )
    probe_interval_s: float = Field(
        0.3, gt=0,
        description="One member is probed this often (slower when this host is unhealthy). Lower = faster"
        " detection, more packets (a probe is ~150 bytes); see probe_timeout_s.",
    )
    probe_timeout_s: float = Field(
        0.12, gt=0,
        description="Wait this long for an ack before asking others to probe; well above the LAN round trip"
        " and under half of probe_interval_s so indirect acks and nacks arrive within the interval.",
    )
    indirect_probes: int = Field(
        3, ge=0, description="Members asked to probe a silent member for us: a lossy link alone accuses nobody."
    )
    suspicion_multiplier: float = Field(
        3.0, ge=1,
        description="A suspect is declared dead after multiplier x max(1, log10(n)) x probe_interval_s (less"
        " with confirmations); higher = fewer false deaths on bad networks, slower detection.",
    )
    suspicion_max_multiplier: float = Field(
        3.0, ge=1,
        description="Without confirmations from other members the suspicion lasts this many times longer"
        " (Lifeguard); memberlist uses 6.",
    )
    retransmit_multiplier: int = Field(
        4, ge=1,
        description="Each update is sent multiplier x ceil(log10(n + 1)) times; 4 reached every member in every"
        " simulated run, with 10 % loss, up to 1,000 members.",
    )
    gossip_interval_s: float = Field(
        0.1, gt=0, description="Pending updates go to gossip_nodes random members this often (nothing when idle)."
    )
    gossip_nodes: int = Field(3, ge=1, description="Members each gossip round sends pending updates to.")
    push_pull_interval_s: float = Field(
        30.0, gt=0,
        description="Full state is exchanged with one random member this often (over the peer API): heals"
        " partitions and missed updates; scaled up past 32 members to bound the traffic.",
    )
    report_interval_s: float = Field(
        10.0, gt=0,
        description="This host's resource report is recomputed this often; a significant change is gossiped"
        " (at most every report_min_interval_s), an unchanged one every 60 s.",
    )
    report_min_interval_s: float = Field(
        2.0, ge=0, description="Floor between two announcements of this host's report (a flapping value costs little)."
    )

    @model_validator(mode="after")
    def _timeout_under_interval(self) -> GossipSection:
        if self.probe_timeout_s * 2 > self.probe_interval_s:
            raise ValueError("probe_timeout_s must be at most half of probe_interval_s")
        return self


class Config(Section):
    host: HostSection = Field(default_factory=HostSection, description="This host.")
    api: ApiSection = Field(default_factory=ApiSection, description="HTTP API.")
    libvirt: LibvirtSection = Field(default_factory=LibvirtSection, description="Hypervisor connection.")
    log: LogSection = Field(default_factory=LogSection, description="Logging.")
    identity: IdentitySection = Field(default_factory=IdentitySection, description="Users, tokens, policy.")
    compute: ComputeSection = Field(default_factory=ComputeSection, description="Compute service.")
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection, description="Placement.")
    network: NetworkSection = Field(default_factory=NetworkSection, description="Networking.")
    cluster: ClusterSection = Field(default_factory=ClusterSection, description="Cluster membership.")
    fencing: FencingSection = Field(default_factory=FencingSection, description="Fencing and evacuation.")
    images: ImagesSection = Field(default_factory=ImagesSection, description="Image data across hosts.")
    gossip: GossipSection = Field(default_factory=GossipSection, description="Host membership and liveness gossip.")
    volumes: VolumesSection = Field(default_factory=VolumesSection, description="Block storage (volumes).")
    tls: TlsSection = Field(default_factory=TlsSection, description="TLS and the cluster CA.")

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> Config:
        urls = self.cluster.peer_urls().values()
        schemes = {u.partition("://")[0] for u in urls}
        if self.tls.enabled and "http" in schemes:
            raise ValueError("[tls] enabled: every cluster peer URL must be https://")
        if not self.tls.enabled and "https" in schemes:
            raise ValueError("cluster peer URLs are https:// but [tls] enabled is false")
        exposed = [h for h in (self.api.listen, *(urlparse(u).hostname or "" for u in urls)) if not _loopback(h)]
        if self.cluster.peers and exposed and not self.tls.enabled and not self.tls.insecure_plaintext:
            raise ValueError(
                f"a cluster reached at {', '.join(sorted(set(exposed)))} needs TLS: run `hvd cluster init` and set"
                " [tls] enabled = true (or, on a closed lab network only, [tls] insecure_plaintext = true)"
            )
        return self

    @property
    def host_name(self) -> str:
        return self.host.name or os.uname().nodename

    @property
    def node_id(self) -> str:
        return self.cluster.node_id or self.host_name


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith("HVD_") or "__" not in key:
            continue
        section, _, field = key[4:].lower().partition("__")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(section, {})[field] = value
    return out


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"'{where}': {err['msg']}")
    return "; ".join(parts)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read hvd.toml (if given), apply HVD_* environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for section, fields in _env_overrides(os.environ if environ is None else environ).items():
        current = data.setdefault(section, {})
        if isinstance(current, dict):
            current.update(fields)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config{f' {path}' if path else ''}: {_describe(exc)}") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return _toml_value(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def example_toml() -> str:
    """The text of hvd.toml.example: every section and field with its description and default."""
    lines = ["# hvd.toml — generated by `hvd config example`; every key shows its default.", ""]
    defaults = Config()
    for section_name, section_field in Config.model_fields.items():
        lines.append(f"# {section_field.description}")
        lines.append(f"[{section_name}]")
        section = getattr(defaults, section_name)
        for name, field in type(section).model_fields.items():
            lines.append(f"# {field.description}")
            lines.append(f"{name} = {_toml_value(getattr(section, name))}")
        lines.append("")
    return "\n".join(lines)
