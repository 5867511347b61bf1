"""QEMU's x509 directory: the cluster CA and this host's certificate as QEMU and libvirt name them.

With ``[tls] enabled`` hvd writes, at start-up, into ``[tls] qemu_x509_dir`` (default /etc/pki/qemu,
libvirt's ``default_tls_x509_cert_dir``, which Debian's AppArmor profile lets QEMU read):

- ``ca-cert.pem``: the cluster CA;
- ``server-cert.pem`` / ``server-key.pem``: this host's certificate and key, presented by the
  NBD exports of this host's volumes (qemu-storage-daemon, ``endpoint=server,verify-peer=on``:
  a client must present a certificate of the same CA, i.e. be a cluster member);
- ``client-cert.pem`` / ``client-key.pem``: the same pair again, presented by this host's guests
  (libvirt network disks with ``tls='yes'``, which use qemu.conf's ``nbd_tls_x509_cert_dir``,
  else ``default_tls_x509_cert_dir``).

A host certificate is good for both ends (serverAuth + clientAuth), so one pair serves both roles.
QEMU runs as libvirt's QEMU user and reads the keys itself (libvirt does not relabel this
directory): keys are root-owned, mode 0640, group that user's group. A marker file says the
directory is hvd's; a directory with other files and no marker is refused rather than overwritten
(it may hold another CA's certificates for VNC or migration).

The functions on text and bytes are pure; ``install`` and ``write_dir`` touch the file system.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hvd.errors import ConfigError

if TYPE_CHECKING:
    from hvd.config import Config

DEFAULT_DIR = "/etc/pki/qemu"  # libvirt's built-in default_tls_x509_cert_dir
MARKER = ".hvd-managed"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# the qemu.conf setting libvirt reads first for each use, before default_tls_x509_cert_dir
CONF_KEYS = {"nbd": "nbd_tls_x509_cert_dir", "migrate": "migrate_tls_x509_cert_dir"}


@dataclass(frozen=True)
class PemFile:
    name: str
    data: bytes
    secret: bool  # a private key: readable by root and QEMU's group only


def pem_files(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> list[PemFile]:
    """The files of QEMU's x509 directory for one host (pure)."""
    return [
        PemFile("ca-cert.pem", ca_pem, False),
        PemFile("server-cert.pem", cert_pem, False),
        PemFile("server-key.pem", key_pem, True),
        PemFile("client-cert.pem", cert_pem, False),
        PemFile("client-key.pem", key_pem, True),
    ]


def _conf_value(text: str, key: str) -> str | None:
    """The last uncommented ``key = "value"`` of a libvirt .conf text, or None."""
    found = re.findall(rf'^\s*{re.escape(key)}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return found[-1] if found else None


def libvirt_cert_dir(qemu_conf_text: str, use: Literal["nbd", "migrate"]) -> str:
    """The directory libvirt's QEMU takes x509 files from for ``use`` (pure, over qemu.conf's text):
    the use's own setting, else ``default_tls_x509_cert_dir``, else /etc/pki/qemu."""
    return (_conf_value(qemu_conf_text, CONF_KEYS[use]) or _conf_value(qemu_conf_text, "default_tls_x509_cert_dir")
            or DEFAULT_DIR)


def conf_problem(qemu_conf_text: str, directory: str, use: Literal["nbd", "migrate"] = "nbd") -> str:
    """'' when libvirt's QEMU reads ``directory`` for ``use``, else what is wrong and the qemu.conf
    line that fixes it (pure)."""
    used = libvirt_cert_dir(qemu_conf_text, use)
    if os.path.normpath(used) == os.path.normpath(directory):
        return ""
    who = {"nbd": "libvirt's NBD clients", "migrate": "libvirt's TLS migrations"}[use]
    # the setting of this use, not the default one: the default may serve VNC with other certificates
    return (f"{who} read {used} but hvd writes the cluster certificates to {directory}: set"
            f' {CONF_KEYS[use]} = "{directory}" in qemu.conf (then restart libvirtd), or [tls] qemu_x509_dir'
            f' = "{used}"')


def qemu_gid(user: str) -> int | None:
    """The group QEMU's key files get: the group named like the QEMU user (Debian: libvirt-qemu),
    else that user's primary group; None when the user does not exist here."""
    try:
        entry = pwd.getpwuid(int(user[1:])) if user.startswith("+") else pwd.getpwnam(user)
    except (KeyError, ValueError):
        return None
    try:
        return grp.getgrnam(entry.pw_name).gr_gid
    except KeyError:
        return entry.pw_gid


def write_dir(directory: Path, files: list[PemFile], gid: int | None) -> bool:
    """Make ``directory`` hold exactly ``files`` (atomic renames; only what changed is rewritten);
    True when anything changed. Raises ConfigError for a directory hvd does not own."""
    if directory.is_dir() and not (directory / MARKER).exists():
        foreign = sorted(p.name for p in directory.iterdir())
        if foreign:
            raise ConfigError(f"[tls] qemu_x509_dir {directory} holds files hvd did not write"
                              f" ({', '.join(foreign[:5])}): choose an empty or new directory (and point"
                              " qemu.conf's nbd_tls_x509_cert_dir at it), or move those files away")
    group = -1 if gid is None else gid
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(directory, -1, group)
    directory.chmod(0o750)  # QEMU's group searches it; others see nothing
    (directory / MARKER).write_text("written by hvd from the cluster CA and this host's certificate\n")
    changed = False
    for f in files:
        path = directory / f.name
        mode = 0o640 if f.secret else 0o644
        try:
            st = path.stat()
            same = path.read_bytes() == f.data and st.st_mode & 0o777 == mode and (gid is None or st.st_gid == gid)
        except OSError:
            same = False
        if same:
            continue
        tmp = path.with_name(f".{f.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, -1, group)
            os.fchmod(fd, mode)
            os.write(fd, f.data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(path)
        changed = True
    return changed


def qemu_x509_dir(config: Config) -> Path:
    """``[tls] qemu_x509_dir``; empty = libvirt's default with the libvirt driver, a directory under
    data_dir with the fake driver (no libvirt reads it; tests must not write /etc/pki)."""
    if config.tls.qemu_x509_dir:
        return Path(config.tls.qemu_x509_dir)
    return Path(DEFAULT_DIR) if config.compute.driver == "libvirt" else Path(config.host.data_dir) / "qemu-x509"


def install(config: Config, qemu_user: str | None = None) -> Path | None:
    """Write QEMU's x509 directory from ``[tls]``'s files when TLS is on; returns it, else None."""
    if not config.tls.enabled:
        return None
    from hvd.cluster.tls import files_for
    from hvd.drivers.libvirt.access import qemu_user_name

    tls = files_for(config)
    directory = qemu_x509_dir(config)
    try:
        files = pem_files(tls.ca_cert.read_bytes(), tls.cert.read_bytes(), tls.key.read_bytes())
        # only root can hand the files to QEMU's group (a non-root daemon is a test: QEMU is not involved)
        gid = qemu_gid(qemu_user or qemu_user_name()) if os.geteuid() == 0 else None
        write_dir(directory, files, gid)
    except OSError as exc:
        raise ConfigError(f"[tls] qemu_x509_dir {directory}: cannot write QEMU's certificates: {exc}") from exc
    return directory
