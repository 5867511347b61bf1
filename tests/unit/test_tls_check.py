"""`hvd doctor`'s TLS findings (hvd/cluster/tls_check.py): each way a host's [tls] files can be
wrong is named with a fix, before a peer's handshake or the 403 of a certificate of another node
says so in a log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from hvd.cluster.tls import create_ca, issue_host
from hvd.cluster.tls_check import Reached, assess, findings, reached_names
from hvd.config import Config

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
CA, CA_KEY = create_ca("c", NOW)
CERT, KEY = issue_host(CA, CA_KEY, "node1", ["node1", "10.0.0.1"], NOW)
PEER = [Reached("10.0.0.1", "peer URL", "FAIL")]


def test_good_material_is_one_ok_saying_what_was_checked() -> None:
    [ok] = assess(CA, CERT, KEY, "node1", PEER, NOW)
    assert ok.status == "OK" and "certificate of node1" in ok.detail and "covers 10.0.0.1" in ok.detail


def test_a_certificate_of_another_ca_fails() -> None:
    other, other_key = create_ca("other", NOW)
    cert, key = issue_host(other, other_key, "node1", ["node1", "10.0.0.1"], NOW)
    [bad] = assess(CA, cert, key, "node1", PEER, NOW)
    assert bad.status == "FAIL" and "not issued by the cluster CA" in bad.detail and "hvd cluster" in bad.fix


def test_a_key_of_another_issue_fails() -> None:
    _, other_key = issue_host(CA, CA_KEY, "node1", ["node1"], NOW)
    [bad] = assess(CA, CERT, other_key, "node1", PEER, NOW)
    assert bad.status == "FAIL" and "does not match" in bad.detail


def test_a_certificate_of_another_node_fails() -> None:
    [bad] = assess(CA, CERT, KEY, "node2", PEER, NOW)
    assert bad.status == "FAIL" and "names node 'node1', this host is node 'node2'" in bad.detail


def test_names_not_covered_fail_for_the_peer_url_and_warn_for_the_listen_address() -> None:
    reached = [Reached("10.0.0.9", "peer URL", "FAIL"), Reached("host1.example", "listen address", "WARN")]
    found = assess(CA, CERT, KEY, "node1", reached, NOW)
    assert [(f.status, f.detail.split(" (")[0]) for f in found] == [
        ("FAIL", "the host certificate does not cover 10.0.0.9"),
        ("WARN", "the host certificate does not cover host1.example")]
    assert found[0].fix == "issue it again with --san 10.0.0.9 (or --url)"


@pytest.mark.parametrize(("days", "status", "words"), [(810, "WARN", "expires on"), (830, "FAIL", "expired on")])
def test_a_certificate_near_or_past_its_expiry(days: int, status: str, words: str) -> None:
    [found] = assess(CA, CERT, KEY, "node1", PEER, NOW + dt.timedelta(days=days))
    assert found.status == status and words in found.detail


def test_files_that_do_not_parse_fail() -> None:
    assert assess(b"junk", CERT, KEY, "node1", PEER, NOW)[0].detail.startswith("the CA certificate does not parse")
    assert assess(CA, b"junk", KEY, "node1", PEER, NOW)[0].detail.startswith("the host certificate does not parse")
    assert assess(CA, CERT, b"junk", "node1", PEER, NOW)[0].detail.startswith("the host key does not parse")


def config(tmp_path: Path, **tls: object) -> Config:
    return Config.model_validate({
        "host": {"name": "node1", "data_dir": str(tmp_path)},
        "api": {"listen": "0.0.0.0"},
        "cluster": {"peers": ["node1=https://10.0.0.1:8774", "node2=https://10.0.0.2:8774"], "cluster_key": "k" * 16},
        "tls": {"enabled": True, **tls},
    })


def test_where_the_host_is_reached_and_missing_files(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert [(r.name, r.status) for r in reached_names(cfg)] == [("10.0.0.1", "FAIL")]  # 0.0.0.0 is nobody's
    [missing] = findings(cfg, NOW)
    assert missing.status == "FAIL" and "ca.crt" in missing.detail and "hvd cluster init" in missing.fix


def test_tls_off(tmp_path: Path) -> None:
    plain = Config.model_validate({"host": {"name": "n", "data_dir": str(tmp_path)}})
    assert findings(plain, NOW)[0].status == "OK"
    lab = Config.model_validate({"host": {"name": "n", "data_dir": str(tmp_path)}, "api": {"listen": "10.0.0.1"},
                                 "cluster": {"peers": ["n=http://10.0.0.1:8774"], "cluster_key": "k" * 16},
                                 "tls": {"insecure_plaintext": True}})
    [warn] = findings(lab, NOW)
    assert warn.status == "WARN" and "in clear" in warn.detail
