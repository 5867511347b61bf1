"""Remote consoles over real HTTP and WebSockets with the fake driver: the remote-console answer,
refusals, one-time tokens bound to protocol and project, the serial relay (and `hvd console` with
a piped stdin), the VNC proxy's RFB handshake and the screenshot PNG, and attached consoles closing
once the API token that opened them loses its access or the server stops. Real guests:
tests/lab/test_consoles_libvirt.py."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from hvd.api import console_tokens
from hvd.api.app import build_app
from hvd.api.console_tokens import ConsoleGrant, Refusal
from hvd.api.v1 import consoles
from hvd.drivers.remote_console import png_size
from tests.conftest import Api
from tests.functional.compute_helpers import action, make_flavor, make_qcow2, upload_image


@pytest.fixture
async def server(admin_api: Api, tmp_path: Path) -> dict[str, Any]:
    await upload_image(admin_api, make_qcow2(tmp_path / "base.qcow2"), name="base")
    await make_flavor(admin_api)
    status, body = await admin_api.call("POST", "/v1/servers?wait=true",
                                        {"name": "con1", "flavor": "m1.tiny", "image": "base"})
    assert status == 202 and body["status"] == "ACTIVE", body
    return dict(body)


async def console_url(api: Api, sid: str, protocol: str) -> str:
    status, body = await api.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": protocol})
    assert status == 200, body
    return str(body["remote_console"]["url"])


async def read_until(ws: aiohttp.ClientWebSocketResponse, wanted: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            seen += msg.data
    return seen


async def handshake_refused(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
    return refused.value.status


async def test_remote_console_answer_and_refusals(admin_api: Api, server: dict[str, Any]) -> None:
    sid = server["id"]
    status, body = await admin_api.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": "serial"})
    assert status == 200, body
    console = body["remote_console"]
    assert console["protocol"] == "serial" and console["expires_at"].endswith("Z")
    assert console["url"].startswith(admin_api.url.replace("http://", "ws://") + "/v1/console/serial?token=")

    status, body = await admin_api.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": "spice"})
    assert status == 400 and "protocol" in body["error"]["message"], body
    status, body = await admin_api.call("POST", "/v1/servers/no-such-server/remote-console", {"protocol": "serial"})
    assert status == 404, body

    await action(admin_api, sid, "stop")
    status, body = await admin_api.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": "vnc"})
    assert status == 409 and "not running" in body["error"]["message"], body
    status, body = await admin_api.call("GET", f"/v1/servers/{sid}/screenshot")
    assert status == 409, body


async def test_serial_console_relays_and_keeps_logging(admin_api: Api, server: dict[str, Any]) -> None:
    sid = server["id"]
    url = await console_url(admin_api, sid, "serial")
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        assert ws.protocol == "binary"
        # only one session at a time (libvirt's rule): a second URL is refused while this one is attached
        assert await handshake_refused(await console_url(admin_api, sid, "serial")) == 409
        await ws.send_bytes(b"echo hello-console\r")
        assert b"\r\nhello-console\r\n" in await read_until(ws, b"\r\nhello-console\r\n")
    _, log = await admin_api.call("GET", f"/v1/servers/{sid}/console-log")
    assert "hello-console" in log["output"]  # the port stays logged while someone is attached

    assert await handshake_refused(url) == 401  # a console URL works once
    # after detaching, the console is free again
    async with aiohttp.ClientSession() as http, http.ws_connect(await console_url(admin_api, sid, "serial")) as ws:
        await ws.send_str("echo again\n")
        await read_until(ws, b"\r\nagain\r\n")


async def test_console_session_ends_when_the_guest_stops(admin_api: Api, server: dict[str, Any]) -> None:
    sid = server["id"]
    async with aiohttp.ClientSession() as http, http.ws_connect(await console_url(admin_api, sid, "serial")) as ws:
        await action(admin_api, sid, "stop")
        async with asyncio.timeout(10):
            msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg


async def test_tokens_are_bound_to_protocol_and_checked_before_spent(admin_api: Api, server: dict[str, Any]) -> None:
    sid = server["id"]
    url = await console_url(admin_api, sid, "serial")
    http_url = url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        # a plain GET (no WebSocket upgrade) is refused and does not spend the token
        async with http.get(http_url) as resp:
            assert resp.status == 400 and "WebSocket" in (await resp.json())["error"]["message"]
        vnc_url = http_url.replace("/v1/console/serial", "/v1/console/vnc").replace("http://", "ws://")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(vnc_url)  # a serial token at the VNC proxy: refused, and spent
        assert refused.value.status == 403
    assert await handshake_refused(url) == 401
    assert await handshake_refused(url.split("?")[0]) == 401  # no token at all
    assert await handshake_refused(url.split("?")[0] + "?token=forged") == 401


async def test_console_tokens_stay_out_of_the_request_log(admin_api: Api, server: dict[str, Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A console token is a credential: a refused plain GET leaves it unspent, so its log line must not carry it."""
    caplog.set_level(logging.INFO, logger="hvd.api")
    url = await console_url(admin_api, server["id"], "serial")
    token = url.split("token=", 1)[1]
    async with aiohttp.ClientSession() as http, http.get(url.replace("ws://", "http://")) as resp:
        assert resp.status == 400
    lines = [r.getMessage() for r in caplog.records if "/v1/console/serial" in r.getMessage()]
    assert lines and all(token not in line for line in lines), lines


async def test_other_projects_cannot_get_a_console(admin_api: Api, server: dict[str, Any]) -> None:
    assert (await admin_api.call("POST", "/v1/projects", {"name": "other"}))[0] == 201
    status, body = await admin_api.call("POST", "/v1/users", {"name": "other-user", "password": "password-1",
                                                              "project": "other", "role": "member"})
    assert status == 201, body
    other = admin_api.as_other()
    await other.login("other-user", "password-1", "other")
    status, body = await other.call("POST", f"/v1/servers/{server['id']}/remote-console", {"protocol": "serial"})
    assert status == 404, body
    status, body = await other.call("GET", f"/v1/servers/{server['id']}/screenshot")
    assert status == 404, body


async def test_an_admin_of_another_project_opens_the_console(admin_api: Api, server: dict[str, Any]) -> None:
    """Admins see every project's servers: the URL they are given must work (it was refused 409 as
    'not in the project the console was issued for')."""
    assert (await admin_api.call("POST", "/v1/projects", {"name": "ops"}))[0] == 201
    status, body = await admin_api.call("POST", "/v1/users", {"name": "ops-admin", "password": "password-1",
                                                              "project": "ops", "role": "admin"})
    assert status == 201, body
    ops = admin_api.as_other()
    await ops.login("ops-admin", "password-1", "ops")
    url = await console_url(ops, server["id"], "serial")
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        assert ws.protocol == "binary"
        await ws.close()


async def test_attached_consoles_are_closed_when_the_daemon_shuts_down(admin_api: Api, api_server: tuple[Any, str],
                                                                      server: dict[str, Any]) -> None:
    """An attached console must not hold the daemon's shutdown until aiohttp's timeout (60 s): the
    app's shutdown closes it (going away), as it does the Raft streams."""
    app = build_app(api_server[0])
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        other = Api(admin_api.session, str(test_server.make_url("")).rstrip("/"))
        other.token = admin_api.token
        url = await console_url(other, server["id"], "serial")
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
            await app.shutdown()
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY, msg
    finally:
        await test_server.close()


async def test_vnc_proxy_completes_an_rfb_handshake_and_screenshot_is_png(admin_api: Api,
                                                                          server: dict[str, Any]) -> None:
    sid = server["id"]
    url = await console_url(admin_api, sid, "vnc")
    assert "/v1/console/vnc?token=" in url
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("binary",)) as ws:
        width, height, name = await rfb_handshake(ws)
    assert (width, height) == (640, 480) and name.startswith("instance-")
    async with aiohttp.ClientSession() as http, http.get(f"{admin_api.url}/v1/servers/{sid}/screenshot",
                        headers={"Authorization": f"Bearer {admin_api.token}"}) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        png = await resp.read()
    assert png_size(png) == (width, height)


class RfbReader:
    """Bytes of RFB messages out of WebSocket frames (a message may span frames, or share one)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buffer = b""

    async def read(self, n: int) -> bytes:
        async with asyncio.timeout(20):
            while len(self.buffer) < n:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                self.buffer += msg.data
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


async def rfb_handshake(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, int, str]:
    """RFB 3.8 as a client (RFC 6143 7.1-7.3): version, security None, ClientInit; ServerInit's
    framebuffer width, height and desktop name."""
    rfb = RfbReader(ws)
    version = await rfb.read(12)
    assert version.startswith(b"RFB 003.") and version.endswith(b"\n"), version
    await ws.send_bytes(b"RFB 003.008\n")
    count = (await rfb.read(1))[0]
    assert count > 0, await rfb.read(4)  # 0: the server says why it refuses
    types = await rfb.read(count)
    assert 1 in types, types  # None: the display is only reachable through this proxy
    await ws.send_bytes(b"\x01")
    assert struct.unpack(">I", await rfb.read(4))[0] == 0  # SecurityResult OK
    await ws.send_bytes(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", await rfb.read(4))
    await rfb.read(16)  # pixel format
    (name_length,) = struct.unpack(">I", await rfb.read(4))
    return width, height, (await rfb.read(name_length)).decode()


async def test_hvd_console_with_a_piped_stdin(admin_api: Api, server: dict[str, Any]) -> None:
    """`printf 'echo ...\\r' | hvd console SERVER`: what the guest answers is printed."""
    env = {**os.environ, "HVD_URL": admin_api.url, "HVD_TOKEN": str(admin_api.token)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hvd", "console", "con1", "--linger", "1", env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"echo from-a-script\r"), 60)
    assert proc.returncode == 0, err.decode()
    assert b"\r\nfrom-a-script\r\n" in out, (out, err)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Refusal | None]]:
    """Attached consoles check their access often (not every 5 s); each check's (issuing user, answer) is recorded."""
    seen: list[tuple[str, Refusal | None]] = []

    def recorded(grant: ConsoleGrant, *args: Any) -> Refusal | None:
        answer = console_tokens.console_refusal(grant, *args)
        seen.append((grant.user, answer))
        return answer

    monkeypatch.setattr(consoles, "ACCESS_CHECK_S", 0.05)
    monkeypatch.setattr(consoles, "console_refusal", recorded)
    return seen


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30.0) -> tuple[int, str]:
    """The close code and message the server sends next (output before it is skipped)."""
    async with asyncio.timeout(timeout):
        while (msg := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
            pass
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data), str(msg.extra)


async def test_a_console_closes_when_the_token_that_opened_it_is_revoked(
        admin_api: Api, server: dict[str, Any], checks: list[tuple[str, Refusal | None]],
        caplog: pytest.LogCaptureFixture) -> None:
    """Logging out (DELETE /v1/auth/token) closes the consoles that token opened (4401), not those of
    another still-valid token; the same rule refuses a URL the revoked token asked for."""
    caplog.set_level(logging.INFO, logger="hvd.api.v1.consoles")
    sid = server["id"]
    assert (await admin_api.call("POST", "/v1/users", {"name": "op", "password": "password-1",
                                                       "project": "admin", "role": "member"}))[0] == 201
    leaving = admin_api.as_other()
    await leaving.login("op", "password-1", "admin")
    unused_url = await console_url(leaving, sid, "vnc")
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(await console_url(leaving, sid, "serial")) as doomed, \
            http.ws_connect(await console_url(admin_api, sid, "vnc"), protocols=("binary",)) as staying:
        await doomed.send_bytes(b"echo before-logout\r")
        await read_until(doomed, b"\r\nbefore-logout\r\n")
        assert (await leaving.call("DELETE", "/v1/auth/token"))[0] == 204

        code, message = await closed_with(doomed)
        assert (code, message) == (4401, "the token that opened this console is no longer valid")
        refused_at = next(i for i, (user, answer) in enumerate(checks) if user == "op" and answer is not None)
        # the other console's access is checked after the logout too (the second check after the refusal
        # started after it): allowed, and the console still relays
        async with asyncio.timeout(30):
            while len(after := [answer for user, answer in checks[refused_at:] if user == "admin"]) < 2:
                await asyncio.sleep(0.05)
        assert after == [None] * len(after)
        width, _, _ = await rfb_handshake(staying)
        assert width == 640
    assert any("serial console of" in r.getMessage() and "opened by op" in r.getMessage()
               and "no longer valid" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(unused_url)
    assert refused.value.status == 401


async def test_consoles_close_when_access_is_taken_or_the_server_stops(
        admin_api: Api, server: dict[str, Any], checks: list[tuple[str, Refusal | None]]) -> None:
    """A role taken away (4403: the token still validates, but may no longer open consoles), and a
    stopped server (4409: the fake driver keeps a stopped server's display, as the VNC relay did)."""
    sid = server["id"]
    status, user = await admin_api.call("POST", "/v1/users", {"name": "demoted", "password": "password-1",
                                                              "project": "admin", "role": "member"})
    assert status == 201, user
    demoted = admin_api.as_other()
    await demoted.login("demoted", "password-1", "admin")
    status, project = await admin_api.call("GET", "/v1/projects/admin")
    assert status == 200, project
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(await console_url(demoted, sid, "serial")) as ws:
            base = f"/v1/projects/{project['id']}/users/{user['id']}/roles"
            assert (await admin_api.call("PUT", f"{base}/reader"))[0] == 200
            assert (await admin_api.call("DELETE", f"{base}/member"))[0] == 204
            code, message = await closed_with(ws)
            assert (code, message) == (4403, "the token that opened this console may no longer open it")
        async with http.ws_connect(await console_url(admin_api, sid, "vnc")) as ws:
            await action(admin_api, sid, "stop")
            code, message = await closed_with(ws)
            assert (code, message) == (4409, f"server {sid} is no longer running")


async def test_hvd_console_tells_why_the_server_closed_it(
        admin_api: Api, server: dict[str, Any], checks: list[tuple[str, Refusal | None]]) -> None:
    """`hvd console` ends with the server's reason when its token is revoked, not a bare "closed"."""
    from hvd.cli.console import attach

    status, _ = await admin_api.call("POST", "/v1/users", {"name": "cli-user", "password": "password-1",
                                                           "project": "admin", "role": "member"})
    assert status == 201
    user = admin_api.as_other()
    await user.login("cli-user", "password-1", "admin")
    url = await console_url(user, server["id"], "serial")
    keys_r, keys_w = os.pipe()  # stdin that stays open: only the server ends this console
    out_r, out_w = os.pipe()
    os.set_blocking(out_r, False)
    try:
        attached = asyncio.ensure_future(attach(url, keys_r, out_w, linger=0, tls=False))
        async with asyncio.timeout(30):
            while not any(u == "cli-user" for u, _ in checks):  # attached and watched
                await asyncio.sleep(0.05)
        assert (await user.call("DELETE", "/v1/auth/token"))[0] == 204
        why = await asyncio.wait_for(attached, 30)
    finally:
        for fd in (keys_r, keys_w, out_r, out_w):
            os.close(fd)
    assert why == "closed: the token that opened this console is no longer valid"


async def test_a_console_rides_out_a_short_catalog_hiccup_and_closes_if_it_lasts(
        admin_api: Api, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Access checks that fail (a leader change) keep the console open for a few rounds; if they go
    on failing it closes with 1011 and a reason, not silently."""
    failing = {"rounds": 2}
    calls = {"n": 0}

    def flaky(grant: ConsoleGrant, *args: Any) -> Refusal | None:
        calls["n"] += 1
        if failing["rounds"] > 0:
            failing["rounds"] -= 1
            raise RuntimeError("catalog unavailable")
        return console_tokens.console_refusal(grant, *args)

    monkeypatch.setattr(consoles, "ACCESS_CHECK_S", 0.05)
    async with aiohttp.ClientSession() as http, http.ws_connect(await console_url(admin_api, server["id"],
                                                                                  "serial")) as ws:
        monkeypatch.setattr(consoles, "console_refusal", flaky)  # after the redemption's own check
        async with asyncio.timeout(30):
            while calls["n"] < 4:  # two failures, then answers: still attached
                await asyncio.sleep(0.05)
        await ws.send_bytes(b"echo still-here\r")
        await read_until(ws, b"\r\nstill-here\r\n")
        failing["rounds"] = 1000
        code, message = await closed_with(ws)
    assert code == 1011 and "cannot be checked" in message
