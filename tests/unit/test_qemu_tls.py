"""QEMU's x509 directory (hvd.cluster.qemu_tls): the files libvirt and qemu-storage-daemon expect,
which directory libvirt reads according to qemu.conf, the writer's modes and its refusal of a
directory it does not own, and the NBD server argv with TLS."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hvd.cluster import qemu_tls
from hvd.config import Config
from hvd.doctor import check_qemu_x509
from hvd.drivers.libvirt.access import qemu_identity
from hvd.errors import ConfigError
from hvd.storage.volumes import nbd


def test_one_host_pair_serves_both_ends_and_keys_are_secret() -> None:
    files = {f.name: f for f in qemu_tls.pem_files(b"CA", b"CERT", b"KEY")}
    assert set(files) == {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"}
    assert files["server-cert.pem"].data == files["client-cert.pem"].data == b"CERT"
    assert {n for n, f in files.items() if f.secret} == {"server-key.pem", "client-key.pem"}


@pytest.mark.parametrize(("conf", "nbd_dir", "migrate_dir"), [
    ("", "/etc/pki/qemu", "/etc/pki/qemu"),
    ('#nbd_tls_x509_cert_dir = "/etc/pki/libvirt-nbd"\n', "/etc/pki/qemu", "/etc/pki/qemu"),
    ('default_tls_x509_cert_dir = "/srv/x509"\n', "/srv/x509", "/srv/x509"),
    ('default_tls_x509_cert_dir = "/srv/x509"\nnbd_tls_x509_cert_dir = "/srv/nbd"\n', "/srv/nbd", "/srv/x509"),
    ('nbd_tls_x509_cert_dir = "/a"\nnbd_tls_x509_cert_dir = "/b"\n', "/b", "/etc/pki/qemu"),  # the last one wins
])
def test_the_directory_libvirt_reads(conf: str, nbd_dir: str, migrate_dir: str) -> None:
    assert qemu_tls.libvirt_cert_dir(conf, "nbd") == nbd_dir
    assert qemu_tls.libvirt_cert_dir(conf, "migrate") == migrate_dir


def test_conf_problem_names_the_setting_to_change() -> None:
    assert qemu_tls.conf_problem("", "/etc/pki/qemu/") == ""
    problem = qemu_tls.conf_problem("", "/srv/hvd-x509")
    assert "read /etc/pki/qemu" in problem and 'set nbd_tls_x509_cert_dir = "/srv/hvd-x509"' in problem
    problem = qemu_tls.conf_problem('nbd_tls_x509_cert_dir = "/x"\n', "/srv/hvd-x509")
    assert 'nbd_tls_x509_cert_dir = "/srv/hvd-x509"' in problem


def test_write_dir_modes_idempotence_and_rotation(tmp_path: Path) -> None:
    d = tmp_path / "pki" / "qemu"
    gid = os.getgid()
    assert qemu_tls.write_dir(d, qemu_tls.pem_files(b"CA", b"CERT", b"KEY"), gid)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    assert stat.S_IMODE((d / "server-key.pem").stat().st_mode) == 0o640
    assert stat.S_IMODE((d / "ca-cert.pem").stat().st_mode) == 0o644
    assert (d / "client-key.pem").stat().st_gid == gid
    assert not qemu_tls.write_dir(d, qemu_tls.pem_files(b"CA", b"CERT", b"KEY"), gid)  # nothing changed
    assert qemu_tls.write_dir(d, qemu_tls.pem_files(b"CA", b"CERT2", b"KEY2"), gid)  # a rotated certificate
    assert (d / "client-cert.pem").read_bytes() == b"CERT2"
    assert not list(d.glob(".*.tmp"))


def test_a_directory_with_files_hvd_did_not_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca-cert.pem").write_bytes(b"someone else's CA (VNC)")
    with pytest.raises(ConfigError, match="holds files hvd did not write"):
        qemu_tls.write_dir(tmp_path, qemu_tls.pem_files(b"CA", b"CERT", b"KEY"), None)
    assert (tmp_path / "ca-cert.pem").read_bytes() == b"someone else's CA (VNC)"


def test_default_directory_per_driver(tmp_path: Path) -> None:
    libvirt = Config.model_validate({"tls": {"enabled": True}})
    assert qemu_tls.qemu_x509_dir(libvirt) == Path("/etc/pki/qemu")
    fake = Config.model_validate({"tls": {"enabled": True}, "compute": {"driver": "fake"},
                                  "host": {"data_dir": str(tmp_path)}})
    assert qemu_tls.qemu_x509_dir(fake) == tmp_path / "qemu-x509"
    assert qemu_tls.install(Config()) is None  # TLS off: nothing written


def test_doctor_warns_when_qemu_conf_points_elsewhere(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('nbd_tls_x509_cert_dir = "/etc/pki/libvirt-nbd"\n')
    check = check_qemu_x509(Config.model_validate({"tls": {"enabled": True}}), conf)
    assert check.status == "WARN" and "/etc/pki/libvirt-nbd" in check.detail
    assert check.fix.startswith('set nbd_tls_x509_cert_dir = "/etc/pki/qemu"')
    # written at start-up: a directory that does not exist yet is not a problem
    conf.write_text('nbd_tls_x509_cert_dir = "/nonexistent/hvd-x509"\n')
    later = Config.model_validate({"tls": {"enabled": True, "qemu_x509_dir": "/nonexistent/hvd-x509"}})
    check = check_qemu_x509(later, conf)  # TLS migrations still read /etc/pki/qemu
    assert check.status == "WARN" and check.fix.startswith('set migrate_tls_x509_cert_dir = "/nonexistent/hvd-x509"')
    conf.write_text('default_tls_x509_cert_dir = "/nonexistent/hvd-x509"\n')
    assert check_qemu_x509(later, conf).status == "OK"
    if qemu_identity() is not None and os.geteuid() == 0:  # pytest's tmp_path is 0700: QEMU's user cannot enter
        hidden = tmp_path / "x509"
        hidden.mkdir()
        conf.write_text(f'default_tls_x509_cert_dir = "{hidden}"\n')
        check = check_qemu_x509(Config.model_validate({"tls": {"enabled": True, "qemu_x509_dir": str(hidden)}}), conf)
        assert check.status == "FAIL" and "is not searchable by" in check.detail, check
    plain = Config.model_validate({"cluster": {"peers": ["a=http://10.0.0.1:8774"], "cluster_key": "k" * 20},
                                   "tls": {"insecure_plaintext": True}})
    check = check_qemu_x509(plain, conf)
    assert check.status == "WARN" and "read and write" in check.detail


def test_qsd_argv_with_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    info = {"type": "file", "path": "/v/volume-x", "format": "raw"}
    argv = nbd.qsd_argv(info, "10.0.0.1", 10809, "volume-x", tmp_path / "x.pid", Path("/etc/pki/qemu"))
    assert argv[argv.index("--object") + 1] == "tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=on"
    assert argv[argv.index("--nbd-server") + 1] == "addr.type=inet,addr.host=10.0.0.1,addr.port=10809,tls-creds=tls0"
    plain = nbd.qsd_argv(info, "10.0.0.1", 10809, "volume-x", tmp_path / "x.pid")
    assert "--object" not in plain and not any("tls-creds" in a for a in plain)
    with pytest.raises(Exception, match="comma"):
        nbd.qsd_argv(info, "10.0.0.1", 10809, "volume-x", tmp_path / "x.pid", Path("/a,b"))


def test_tls_migration_flag_and_the_name_checked_on_the_destination() -> None:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (scripts/setup.sh)")
    from hvd.drivers.libvirt.guest import migration_flags, migration_params

    assert migration_flags(True, False, tls=True) & libvirt.VIR_MIGRATE_TLS
    assert not migration_flags(True, False) & libvirt.VIR_MIGRATE_TLS
    params = migration_params("qemu+tcp://10.0.0.2/system", ("vda",), tls=True)
    assert params == {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"],
                      libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION: "10.0.0.2"}
    assert migration_params("qemu+tcp://10.0.0.2/system") == {}
