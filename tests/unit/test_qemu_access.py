"""instances_path must be searchable by the QEMU user down from /: start-up and `hvd doctor` say
which directory blocks it and how to fix it (before: every create failed with "No valid host ...
Permission denied")."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvd.config import load_config
from hvd.doctor import check_instances_path
from hvd.drivers.libvirt.access import Identity, Owner, first_unsearchable, qemu_identity, qemu_user_name
from hvd.errors import ConfigError

QEMU = Identity("qemu", 107, frozenset({107, 36}))


def owners(modes: dict[str, Owner]) -> object:
    return lambda p: modes.get(str(p), Owner(0, 0, 0o755))


@pytest.mark.parametrize(("modes", "blocked"), [
    ({}, None),
    ({"/srv": Owner(0, 0, 0o700)}, "/srv"),
    ({"/srv": Owner(107, 0, 0o700)}, None),  # its owner
    ({"/srv/hvd": Owner(0, 36, 0o710)}, None),  # one of its groups
    ({"/srv/hvd": Owner(0, 36, 0o701), "/srv/hvd/instances": Owner(0, 0, 0o750)}, "/srv/hvd"),
    ({"/srv/hvd/instances": Owner(0, 0, 0o750)}, "/srv/hvd/instances"),
])
def test_first_unsearchable_directory(modes: dict[str, Owner], blocked: str | None) -> None:
    found = first_unsearchable(Path("/srv/hvd/instances"), QEMU, owners(modes))  # type: ignore[arg-type]
    assert found == (Path(blocked) if blocked else None)
    assert first_unsearchable(Path("/srv/hvd/instances"), Identity("root", 0, frozenset()),
                              owners(modes)) is None  # type: ignore[arg-type]


def test_the_qemu_user_comes_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "qemu"\nuser = "+64055"\n')
    assert qemu_user_name(conf) == "+64055"
    assert qemu_user_name(tmp_path / "missing") == "libvirt-qemu"


@pytest.fixture
def traversable() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp base is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="hvd-qemu-access-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _config(tmp: Path, instances: Path) -> object:
    cfg = tmp / "hvd.toml"
    cfg.write_text(f'[host]\ndata_dir = "{tmp / "data"}"\ninstances_path = "{instances}"\n')
    return load_config(cfg)


needs_qemu_user = pytest.mark.skipif(qemu_identity() is None,
                                     reason="no QEMU user here: install libvirt-daemon-driver-qemu")


@needs_qemu_user
def test_doctor_names_the_blocking_directory(traversable: Path) -> None:
    private = traversable / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    check = check_instances_path(_config(traversable, private / "instances"))  # type: ignore[arg-type]
    assert check.status == "FAIL" and str(private) in check.detail and "0700" in check.detail, check
    assert check.fix == f"chmod o+x {private} (or choose another instances_path)"
    os.chmod(private, 0o711)
    assert check_instances_path(_config(traversable, private / "instances")).status == "OK"  # type: ignore[arg-type]


@needs_qemu_user
async def test_the_libvirt_driver_refuses_to_start_under_a_private_directory(traversable: Path) -> None:
    from hvd.drivers.libvirt.driver import LibvirtDriver

    private = traversable / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    driver = LibvirtDriver(private / "instances", uri="qemu:///system", virt_type="qemu")
    with pytest.raises(ConfigError, match=f"{private} \\(mode 0700\\) is not searchable by"):
        await driver.start()
