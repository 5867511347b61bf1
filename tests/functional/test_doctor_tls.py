"""`hvd doctor`'s tls row on files made by `hvd cluster init` and `hvd cluster issue`: OK for this
host's own material, FAIL naming the problem once another node's certificate is copied over or the
key is of another issue."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hvd.config import load_config
from hvd.doctor import check_tls

REPO = Path(__file__).resolve().parents[2]


def hvd(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "hvd", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env=os.environ)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_doctor_checks_the_tls_files_of_this_host(tmp_path: Path) -> None:
    cfg = tmp_path / "hvd.toml"
    cfg.write_text(f"""
[host]
name = "node1"
data_dir = "{tmp_path / 'data'}"
[api]
listen = "127.0.0.2"
[cluster]
peers = ["node1=https://127.0.0.2:8774", "node2=https://127.0.0.3:8774"]
cluster_key = "doctor-tls-cluster-key-0123"
[tls]
enabled = true
""")
    hvd("cluster", "init", "-c", str(cfg))
    [ok] = check_tls(load_config(cfg))
    assert ok.status == "OK" and "certificate of node1" in ok.detail and "127.0.0.2" in ok.detail, ok

    tls = tmp_path / "data" / "tls"
    hvd("cluster", "issue", "node2", "--url", "https://127.0.0.3:8774", "--out", str(tmp_path / "node2"),
        "-c", str(cfg))
    shutil.copy(tmp_path / "node2" / "host.key", tls / "host.key")  # a key of another issue
    assert {c.detail.split(" (")[0] for c in check_tls(load_config(cfg)) if c.status == "FAIL"} == {
        "the host key does not match the host certificate"}
    shutil.copy(tmp_path / "node2" / "host.crt", tls / "host.crt")  # node2's files on node1
    found = [c for c in check_tls(load_config(cfg)) if c.status == "FAIL"]
    assert any("names node 'node2', this host is node 'node1'" in c.detail for c in found), found
    assert any("does not cover 127.0.0.2 (this host's peer URL)" in c.detail for c in found), found
