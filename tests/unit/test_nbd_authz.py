"""The NBD export's list of admitted hosts (hvd.storage.volumes.nbd_authz), pure parts: the
distinguished names QEMU compares, the rules, and the daemon's options (a real daemon enforcing
them: tests/functional/test_nbd_tls.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvd.errors import DriverError
from hvd.storage.volumes import nbd, nbd_authz


def test_a_host_certificates_dn_is_its_common_name_escaped_as_rfc_4514_says() -> None:
    assert nbd_authz.dn_of("h2") == "CN=h2"
    assert nbd_authz.dn_of("node-1.lab") == "CN=node-1.lab"
    assert nbd_authz.dn_of("a,b+c") == "CN=a\\,b\\+c"
    assert nbd_authz.dn_of("#x ") == "CN=\\#x\\ "


def test_rules_allow_each_host_once_in_order() -> None:
    assert nbd_authz.rules(["h3", "h2", "h3"]) == [
        {"match": "CN=h2", "policy": "allow", "format": "exact"},
        {"match": "CN=h3", "policy": "allow", "format": "exact"}]
    assert nbd_authz.rules([]) == []  # nobody: the list's default policy denies


def test_a_tls_export_names_its_list_and_monitor_and_a_plain_one_neither(tmp_path: Path) -> None:
    info = {"type": "file", "path": "/v/volume-x", "format": "raw"}
    argv = nbd.qsd_argv(info, "10.0.0.1", 10809, "volume-x", tmp_path / "x.pid", tmp_path / "x509",
                        clients={"h2"}, monitor="x.qmp")
    server = argv[argv.index("--nbd-server") + 1]
    assert server.endswith(",tls-creds=tls0,tls-authz=authz0")
    authz = json.loads(argv[argv.index("--object", argv.index("--object") + 1) + 1])
    assert authz == {"qom-type": "authz-list", "id": "authz0", "policy": "deny",
                     "rules": [{"match": "CN=h2", "policy": "allow", "format": "exact"}]}
    assert "socket,id=qmp,path=x.qmp,server=on,wait=off" in argv and "chardev=qmp" in argv
    plain = nbd.qsd_argv(info, "10.0.0.1", 10809, "volume-x", tmp_path / "x.pid", clients={"h2"}, monitor="x.qmp")
    assert not any("authz" in a or "qmp" in a for a in plain)
    with pytest.raises(DriverError, match="comma"):
        nbd_authz.daemon_argv({"h2"}, "a,b.qmp")


async def test_a_monitor_that_is_not_there_is_a_driver_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="cannot set the NBD export's allowed hosts"):
        await nbd_authz.set_clients(tmp_path, "absent.qmp", {"h2"})
