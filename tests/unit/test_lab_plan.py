"""The multi-host lab's pure plan (tests/lab/lab_plan.py): what every lab host's hvd.toml and
libvirt config say, checked without starting anything."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hvd.config import load_config
from tests.lab.lab_plan import (
    GUARD_CIDR,
    INSTANCES_PATH,
    daemon_config,
    host_ip,
    lab_name,
    libvirtd_conf,
    pick_index,
    qemu_conf,
    render_toml,
    root_ip,
    spare_cidr,
)


def test_each_host_config_is_a_valid_hvd_toml_of_one_cluster(tmp_path: Path) -> None:
    configs = []
    for k in (1, 2, 3):
        path = tmp_path / f"h{k}.toml"
        path.write_text(render_toml(daemon_config(7, k, 3, tmp_path / f"h{k}", "pw-123456789", "key-0123456789abcdef",
                                                  {"compute": {"sync_power_state_interval_s": 2.0}})))
        configs.append(load_config(path, environ={}))
    assert [c.host.name for c in configs] == ["h1", "h2", "h3"]
    assert {str(c.host.instances_path) for c in configs} == {INSTANCES_PATH}  # migration needs one path
    assert [c.api.listen for c in configs] == [c.network.local_ip for c in configs] == [
        "10.214.7.1", "10.214.7.2", "10.214.7.3"]
    assert len({c.network.netns_prefix for c in configs}) == 3
    assert len({tuple(c.cluster.peers) for c in configs}) == 1 and len(configs[0].cluster.peers) == 3
    assert all(c.libvirt.virt_type == "qemu" and c.compute.sync_power_state_interval_s == 2.0 for c in configs)


def test_overrides_merge_into_their_section() -> None:
    cfg = daemon_config(0, 1, 1, Path("/d"), "pw", "key", {"cluster": {"join": True}})
    assert cfg["cluster"]["join"] is True and cfg["cluster"]["peers"]
    assert tomllib.loads(render_toml({"a": {"s": 'q"uote', "l": [1, "x"], "m": {"k": False}}})) == {
        "a": {"s": 'q"uote', "l": [1, "x"], "m": {"k": False}}}


def test_addresses_stay_inside_the_guard_range_and_names_fit_an_interface_name() -> None:
    import ipaddress

    guard = ipaddress.ip_network(GUARD_CIDR)
    for index in (0, 99):
        for addr in (host_ip(index, 1), host_ip(index, 250), root_ip(index)):
            assert ipaddress.ip_address(addr) in guard
        assert ipaddress.ip_network(spare_cidr(index)).subnet_of(guard)
        assert len(f"{lab_name(index)}-rt") <= 15  # IFNAMSIZ - 1
    assert pick_index({0, 1, 3}) == 2
    with pytest.raises(RuntimeError, match="lab-down"):
        pick_index(set(range(100)))


def test_libvirt_configs_set_the_host_and_override_the_machines_own_settings() -> None:
    base = ('# listen_addr = "192.168.0.1"\nlisten_addr = "0.0.0.0"\nmax_clients = 5000\n'
            'cgroup_controllers = [ "cpu",\n    "devices" ]\nuser = "libvirt-qemu"\n')
    conf = libvirtd_conf(base, "h1", "10.214.0.1", "u-1")
    assert 'host_uuid = "u-1"' in conf and 'listen_addr = "10.214.0.1"' in conf and "max_clients = 5000" in conf
    assert 'listen_addr = "0.0.0.0"' not in conf and '# listen_addr = "192.168.0.1"' in conf
    qemu = qemu_conf(base, "h1", "10.214.0.1")
    assert 'migration_address = "10.214.0.1"' in qemu and 'user = "libvirt-qemu"' in qemu
    assert "cpu" not in qemu and "devices" not in qemu and "cgroup_controllers = [ ]" in qemu
