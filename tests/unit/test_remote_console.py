"""Remote consoles, pure parts: one-time console tokens (expiry, single use, protocol, the server
and project they are bound to, the outstanding bound), whether an attached console may stay open
(its issuing token, that token's access, the server), and the PPM -> PNG conversion of screenshots."""

from __future__ import annotations

import struct
import zlib

import pytest

from hvd.api.console_tokens import (
    CLOSE_NOT_ALLOWED,
    CLOSE_SERVER_GONE,
    CLOSE_TOKEN_INVALID,
    ConsoleTokens,
    TooManyConsoleTokens,
    check_grant,
    console_refusal,
)
from hvd.api.context import RequestContext
from hvd.api.v1.consoles import close_message
from hvd.compute.lifecycle import PowerState, VmState
from hvd.drivers.remote_console import ImageError, png_rgb, png_size, ppm_to_png
from hvd.errors import Conflict, Forbidden, Unauthorized
from hvd.identity.policy import Policy

SERVER = {"id": "s1", "project_id": "p1", "host": "h1", "deleted_at": None, "vm_state": "active", "power_state": 1}
CALLER = RequestContext(user_id="u1", user_name="alice", project_id="p1", project_name="one", roles=("member",),
                        token_hash="a" * 64, expires_at="2099-01-01T00:00:00.000000Z")


def test_token_works_once_for_its_server_and_project() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    token, grant = tokens.issue("s1", "p1", "serial", now=100.0, issuer=CALLER)
    assert len(token) >= 40 and grant.expires == 700.0
    redeemed = tokens.redeem(token, "serial", now=101.0)
    assert (redeemed.server_id, redeemed.project_id, redeemed.protocol) == ("s1", "p1", "serial")
    with pytest.raises(Unauthorized, match="already used"):
        tokens.redeem(token, "serial", now=102.0)


def test_token_expires() -> None:
    tokens = ConsoleTokens(ttl_s=30)
    token, _ = tokens.issue("s1", "p1", "vnc", now=0.0, issuer=CALLER)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.redeem(token, "vnc", now=30.0)
    with pytest.raises(Unauthorized):  # and it is gone, not valid again later
        tokens.redeem(token, "vnc", now=1.0)


def test_token_for_another_protocol_is_refused_and_spent() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    token, _ = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    with pytest.raises(Forbidden, match="serial console, not vnc"):
        tokens.redeem(token, "vnc", now=1.0)
    with pytest.raises(Unauthorized):
        tokens.redeem(token, "serial", now=2.0)


@pytest.mark.parametrize("token", ["", "forged", "x" * 5000, "\x00\ud800"])
def test_unknown_tokens_are_refused(token: str) -> None:
    tokens = ConsoleTokens(ttl_s=600)
    tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    with pytest.raises(Unauthorized):
        tokens.redeem(token, "serial", now=1.0)


def test_only_a_digest_is_kept() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    token, grant = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    assert token not in repr(tokens.__dict__)
    assert grant.issuer == CALLER.token_hash  # the API token that asked, by its identity digest only


def test_grant_is_bound_to_server_project_and_host() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    _, grant = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    check_grant(grant, SERVER, "h1")
    for server, host, why in (
        (None, "h1", "no longer exists"),
        ({**SERVER, "deleted_at": "2026-01-01T00:00:00Z"}, "h1", "no longer exists"),
        ({**SERVER, "project_id": "p2"}, "h1", "not in the project"),
        (SERVER, "h2", "no longer on host h2"),  # moved (live migration): ask for a new URL there
    ):
        with pytest.raises(Conflict, match=why):
            check_grant(grant, server, host)


def test_outstanding_tokens_are_bounded_and_expired_ones_make_room() -> None:
    tokens = ConsoleTokens(ttl_s=10, max_outstanding=2)
    tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    tokens.issue("s2", "p1", "serial", now=5.0, issuer=CALLER)
    with pytest.raises(TooManyConsoleTokens) as refused:
        tokens.issue("s3", "p1", "serial", now=6.0, issuer=CALLER)
    assert refused.value.status == 429
    tokens.issue("s3", "p1", "serial", now=10.0, issuer=CALLER)  # the first expired
    assert len(tokens) == 2


def test_one_project_cannot_take_every_console_url_of_the_host() -> None:
    """The host-wide bound alone let one tenant's flood of console requests refuse every other
    project's consoles (429) for a whole TTL."""
    tokens = ConsoleTokens(ttl_s=10, max_outstanding=10, max_per_project=2)
    tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    tokens.issue("s1", "p1", "vnc", now=0.0, issuer=CALLER)
    with pytest.raises(TooManyConsoleTokens, match="project p1"):
        tokens.issue("s1", "p1", "serial", now=1.0, issuer=CALLER)
    tokens.issue("s2", "p2", "serial", now=1.0, issuer=CALLER)  # another project still gets its console
    assert len(tokens) == 3


def _decode_png(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit RGB PNG with filter 0 rows, checking every CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", header)
    assert (depth, colour) == (8, 2)
    raw = zlib.decompress(idat)
    rows = [raw[y * (width * 3 + 1):(y + 1) * (width * 3 + 1)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, b"".join(row[1:] for row in rows)


def test_ppm_becomes_a_png_with_the_same_pixels() -> None:
    pixels = bytes((x * 7 + y * 13 + c) % 256 for y in range(3) for x in range(4) for c in range(3))
    ppm = b"P6\n# made by QEMU\n4 3\n255\n" + pixels
    png = ppm_to_png(ppm)
    assert png_size(png) == (4, 3)
    assert _decode_png(png) == (4, 3, pixels)


def test_ppm_with_a_smaller_maxval_is_scaled_to_8_bits() -> None:
    png = ppm_to_png(b"P6 1 1 15\n" + bytes([15, 0, 7]))
    assert _decode_png(png)[2] == bytes([255, 0, 119])


@pytest.mark.parametrize("bad", [b"P3 1 1 255\n0 0 0", b"P6 1 1", b"P6 x 1 255\n", b"P6 1 1 65535\n" + bytes(6),
                                 b"P6 2 2 255\n" + bytes(5)])
def test_bad_ppm_is_refused(bad: bytes) -> None:
    with pytest.raises(ImageError):
        ppm_to_png(bad)


def test_png_size_refuses_other_data() -> None:
    assert png_size(png_rgb(2, 1, bytes(6))) == (2, 1)
    with pytest.raises(ImageError):
        png_size(b"GIF89a" + bytes(30))


def test_a_console_stays_while_its_token_its_access_and_its_server_do() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    _, grant = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    policy = Policy()
    assert console_refusal(grant, CALLER, policy, SERVER, "h1") is None
    # a paused guest keeps its QEMU process, serial port and display: an attached console stays
    paused = {**SERVER, "vm_state": VmState.PAUSED, "power_state": PowerState.PAUSED}
    assert console_refusal(grant, CALLER, policy, paused, "h1") is None
    rescued = {**SERVER, "vm_state": VmState.RESCUED}
    assert console_refusal(grant, CALLER, policy, rescued, "h1") is None
    # an admin of another project keeps the console of this project's server it opened
    admin = RequestContext(user_id="u9", user_name="ops", project_id="p9", project_name="ops", roles=("admin",),
                           token_hash="b" * 64, expires_at="2099-01-01T00:00:00.000000Z")
    _, by_admin = tokens.issue("s1", "p1", "vnc", now=0.0, issuer=admin)
    assert console_refusal(by_admin, admin, policy, SERVER, "h1") is None


def test_a_console_closes_when_its_token_no_longer_validates() -> None:
    """Revoked, expired, user or project disabled or deleted, no role left: validation fails (None)."""
    tokens = ConsoleTokens(ttl_s=600)
    _, grant = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    refusal = console_refusal(grant, None, Policy(), SERVER, "h1")
    assert refusal is not None and refusal.code == CLOSE_TOKEN_INVALID
    assert refusal.message == "the token that opened this console is no longer valid"
    assert isinstance(refusal.error(), Unauthorized)
    # the token's fate comes first: its holder learns nothing about the server
    refusal = console_refusal(grant, None, Policy(), None, "h1")
    assert refusal is not None and refusal.code == CLOSE_TOKEN_INVALID


def test_a_console_closes_when_its_token_may_no_longer_open_it() -> None:
    tokens = ConsoleTokens(ttl_s=600)
    admin = RequestContext(user_id="u9", user_name="ops", project_id="p9", project_name="ops", roles=("admin",),
                           token_hash="b" * 64, expires_at="2099-01-01T00:00:00.000000Z")
    _, by_admin = tokens.issue("s1", "p1", "serial", now=0.0, issuer=admin)
    _, by_member = tokens.issue("s1", "p1", "vnc", now=0.0, issuer=CALLER)
    demoted_admin = RequestContext(**{**admin.__dict__, "roles": ("member",)})  # no longer sees project p1
    reader = RequestContext(**{**CALLER.__dict__, "roles": ("reader",)})  # may read, not open consoles
    for grant, caller in ((by_admin, demoted_admin), (by_member, reader)):
        refusal = console_refusal(grant, caller, Policy(), SERVER, "h1")
        assert refusal is not None and refusal.code == CLOSE_NOT_ALLOWED, caller
        assert isinstance(refusal.error(), Forbidden)
        # and it is told nothing about the server
        assert console_refusal(grant, caller, Policy(), None, "h1") == refusal
    # a policy that lets readers open consoles keeps the reader's console
    assert console_refusal(by_member, reader, Policy({"compute:remote_console": "reader"}), SERVER, "h1") is None


@pytest.mark.parametrize(("server", "host", "why"), [
    (None, "h1", "no longer exists"),
    ({**SERVER, "deleted_at": "2026-01-01T00:00:00Z"}, "h1", "no longer exists"),
    (SERVER, "h2", "no longer on host h2"),  # migrated or evacuated away
    ({**SERVER, "host": None}, "h1", "no longer on host h1"),  # shelved offloaded
    ({**SERVER, "vm_state": VmState.STOPPED, "power_state": PowerState.SHUTDOWN}, "h1", "no longer running"),
    ({**SERVER, "vm_state": VmState.SUSPENDED, "power_state": PowerState.SUSPENDED}, "h1", "no longer running"),
    ({**SERVER, "vm_state": VmState.ERROR, "power_state": PowerState.CRASHED}, "h1", "no longer running"),
    ({**SERVER, "vm_state": VmState.ACTIVE, "power_state": PowerState.SHUTDOWN}, "h1", "no longer running"),
])
def test_a_console_closes_when_its_server_no_longer_runs_here(server: dict[str, object] | None, host: str,
                                                             why: str) -> None:
    tokens = ConsoleTokens(ttl_s=600)
    _, grant = tokens.issue("s1", "p1", "serial", now=0.0, issuer=CALLER)
    refusal = console_refusal(grant, CALLER, Policy(), server, host)
    assert refusal is not None and refusal.code == CLOSE_SERVER_GONE and why in refusal.message, refusal
    assert isinstance(refusal.error(), Conflict)


def test_close_messages_fit_a_close_frame() -> None:
    assert close_message("short") == b"short"
    long = close_message("server " + "é" * 200 + " is gone")  # cut on a character boundary
    assert len(long) <= 123 and long.endswith(b"...")
    assert long.decode().startswith("server é")
