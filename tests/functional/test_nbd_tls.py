"""An NBD export with TLS (hvd.storage.volumes.nbd + hvd.cluster.qemu_tls) against a real
qemu-storage-daemon on loopback: the host the volume is exported to reads it with its certificate
of the cluster CA; another member of the same CA is refused until it asks for the export too, and
again once it let go; a client without a certificate, one with another CA's certificate, and a
plain NBD client are refused. The lab test (tests/lab/test_cluster_volumes.py) does the same through
libvirt."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from hvd.cluster import qemu_tls
from hvd.cluster.tls import create_ca, issue_host
from hvd.storage.volumes import nbd
from hvd.storage.volumes.nbd import ExportRequest, NbdExports
from tests.functional.test_nbd_exports import VOL, Catalog, Paths

pytestmark = pytest.mark.skipif(shutil.which(nbd.QSD) is None,
                                reason="qemu-storage-daemon not installed (Debian package qemu-system-common)")
LISTEN = "127.0.0.3"  # not test_nbd_exports' 127.0.0.1: both may run at once on the same ports


def client_dir(base: Path, ca: bytes, cert: bytes | None, key: bytes | None) -> Path:
    base.mkdir()
    (base / "ca-cert.pem").write_bytes(ca)
    if cert is not None and key is not None:
        (base / "client-cert.pem").write_bytes(cert)
        (base / "client-key.pem").write_bytes(key)
    return base


def qemu_img_info(port: int, creds: Path | None) -> subprocess.CompletedProcess[str]:
    if creds is None:
        argv = ["qemu-img", "info", f"nbd://{LISTEN}:{port}/volume-{VOL}"]
    else:  # sanity-check off: a foreign certificate is offered anyway, for the server to refuse
        argv = ["qemu-img", "info", "--object", f"tls-creds-x509,id=c,dir={creds},endpoint=client,sanity-check=off",
                "--image-opts", f"driver=nbd,host={LISTEN},port={port},export=volume-{VOL},tls-creds=c"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


async def test_only_cluster_members_reach_a_tls_export(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = create_ca("nbd-test", now)
    cert, key = issue_host(ca, ca_key, "h1", ["h1", LISTEN], now)
    members = {h: issue_host(ca, ca_key, h, [h], now) for h in ("h2", "h3")}
    other_ca, other_key = create_ca("stranger", now)
    stranger_cert, stranger_key = issue_host(other_ca, other_key, "h9", ["h9"], now)
    x509 = tmp_path / "qemu-x509"
    qemu_tls.write_dir(x509, qemu_tls.pem_files(ca, cert, key), None)
    data = tmp_path / f"volume-{VOL}"
    with data.open("wb") as f:
        f.truncate(16 << 20)
    catalog = Catalog({"id": VOL, "host": "h1"})
    exports = NbdExports("h1", LISTEN, tmp_path / "nbd", catalog, Paths(data), None, x509)
    await exports.start()

    def reads(host: str) -> bool:
        creds = tmp_path / f"as-{host}"
        if not creds.exists():
            client_dir(creds, ca, *members[host])
        result = qemu_img_info(answer.port, creds)
        return result.returncode == 0 and "virtual size: 16 MiB" in result.stdout

    try:
        answer = await exports.export(ExportRequest(volume_id=VOL, client_host="h2"))
        assert answer.tls
        assert reads("h2") and not reads("h3")  # a member, but no server of h3 uses the volume
        await exports.export(ExportRequest(volume_id=VOL, client_host="h3"))  # a second user (multi-attach)
        assert reads("h3") and reads("h2")
        catalog.users, catalog.wanted = ["h2"], {VOL: {"h2"}}  # the catalog's attachments: h2's only
        await exports.unexport(ExportRequest(volume_id=VOL, client_host="h3"))
        await exports.supervise()
        assert reads("h2") and not reads("h3")
        # hvd restarts: the new run adopts the running daemon and sets its list from the catalog
        catalog.users, catalog.wanted = ["h3"], {VOL: {"h3"}}
        restarted = NbdExports("h1", LISTEN, tmp_path / "nbd", catalog, Paths(data), None, x509)
        await restarted.start()
        await restarted.stop()  # its supervision loop; the daemon keeps serving
        assert reads("h3") and not reads("h2")
        catalog.users, catalog.wanted = ["h2"], {VOL: {"h2"}}
        await restarted.supervise()
        assert reads("h2") and not reads("h3")
        refused = {
            "no certificate": qemu_img_info(answer.port, client_dir(tmp_path / "none", ca, None, None)),
            "another CA": qemu_img_info(answer.port, client_dir(tmp_path / "other", ca, stranger_cert, stranger_key)),
            "plain NBD": qemu_img_info(answer.port, None),
        }
        for why, result in refused.items():
            assert result.returncode != 0 and "virtual size" not in result.stdout, (why, result.stdout)
        assert "TLS negotiation required" in refused["plain NBD"].stderr
        log = (tmp_path / "nbd" / f"{VOL}.log").read_text()
        assert "Verify failed" in log  # the server, not the client, turned the certificate-less ones away
    finally:
        catalog.users = []  # h2 let go too: the daemon stops
        await exports.unexport(ExportRequest(volume_id=VOL, client_host="h2"))
        await exports.stop()
    assert list((tmp_path / "nbd").iterdir()) == []
