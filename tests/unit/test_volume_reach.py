"""Which connection a host uses for an attachment (hvd.compute.volume_reach), over every case: the
volume's host and the server's new host equal or not, the attachment recorded as direct, NBD or
offloaded (a shelved server's, with no connection)."""

from __future__ import annotations

import itertools

import pytest

from hvd.compute.volume_reach import OFFLOADED, Reconnect, reach, reconnect, reconnect_blocker, recorded

HOSTS = ("h1", "h2", "h3")
NBD = {"type": "nbd", "host": "10.0.0.1", "port": 10809, "export": "volume-v", "tls": True}


def test_a_volume_is_opened_directly_on_its_own_host_only() -> None:
    for volume_host, server_host in itertools.product(HOSTS, HOSTS):
        assert reach(volume_host, server_host) == ("direct" if volume_host == server_host else "nbd")


@pytest.mark.parametrize(("info", "kind"), [
    ({"type": "file", "path": "/v/volume-v", "format": "raw"}, "direct"),
    ({"type": "file", "path": "/v/volume-v", "format": "qcow2"}, "direct"),
    ({"type": "block", "path": "/dev/vg/volume-v"}, "direct"),
    (NBD, "nbd"),
    (OFFLOADED, "none"),
])
def test_what_an_attachment_records(info: dict[str, object], kind: str) -> None:
    assert recorded(info) == kind


# (same host?, recorded) -> (reach, ask the volume host for its export, release the old export)
EXPECTED = {
    (True, "direct"): ("direct", False, False),  # stays opened directly (an unshelve on the volume's host)
    (True, "nbd"): ("direct", False, True),  # back on the volume's host: direct, its export let go of first
    (True, "none"): ("direct", False, False),  # unshelved on the volume's host
    (False, "direct"): ("nbd", True, False),  # left the volume's host: its host exports it
    (False, "nbd"): ("nbd", True, False),  # still elsewhere: the export (restarted if it stopped) stays
    (False, "none"): ("nbd", True, False),  # unshelved elsewhere: the export starts again
}


def test_every_reconnect_case() -> None:
    seen = set()
    for volume_host, server_host, was in itertools.product(HOSTS, HOSTS, ("direct", "nbd", "none")):
        same = volume_host == server_host
        how, export, release = EXPECTED[(same, was)]
        assert reconnect(volume_host, server_host, was) == Reconnect(how, export, release), (volume_host,
                                                                                              server_host, was)
        seen.add((same, was))
    assert seen == set(EXPECTED)


def test_an_export_is_released_only_when_the_volume_is_opened_directly_instead() -> None:
    for volume_host, server_host, was in itertools.product(HOSTS, HOSTS, ("direct", "nbd", "none")):
        step = reconnect(volume_host, server_host, was)
        assert step.export == (step.reach == "nbd")  # never both an export and a local path
        assert not (step.release_export and step.export)


def test_only_attached_attachments_are_reconnected() -> None:
    att = {"volume_id": "v1", "instance_id": "i1", "status": "attached", "device": "vdb"}
    assert reconnect_blocker(att) is None
    for status in ("reserved", "attaching", "detaching"):
        reason = reconnect_blocker({**att, "status": status, "device": None if status != "detaching" else "vdb"})
        assert reason is not None and "v1" in reason and status in reason
    assert reconnect_blocker({**att, "device": None}) is not None  # attached without a device: half-way
